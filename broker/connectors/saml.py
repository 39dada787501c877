"""SAML 2.0 Web Browser SSO (SAML profiles section 4.1), service-provider side: the only python3-saml user.

python3-saml runs in strict mode with ``wantAssertionsSigned``, ``rejectDeprecatedAlgorithm`` and the IdP
certificate(s) pinned (never a fingerprint, never the document's ``KeyInfo``). Where the library is lenient
or optional (read ``onelogin/saml2/response.py``), this module enforces the strict form itself, on its own
hardened parse of the same bytes, before the library runs:

* size, base64 and encoding limits before any XML parsing; no DOCTYPE (so no XXE, no entity bombs); no NUL;
  the POST binding is never DEFLATE-compressed (bindings section 3.5.4), so nothing is ever inflated;
* exactly one ``samlp:Response`` with exactly one plain ``saml:Assertion`` anywhere in the document (the
  library counts too, but the broker reads structure only from a document it has checked for wrapping);
* Issuer exactly the IdP's entity id (core 2.2.5); Destination present and exactly the ACS URL (bindings
  3.5.5.2; the library accepts a prefix); every ``AudienceRestriction`` present and naming this SP (core
  2.5.1.4; the library accepts an assertion with none); one bearer ``SubjectConfirmation`` whose Recipient is
  exactly the ACS URL (the library accepts a substring) and whose NotOnOrAfter is present (profiles 4.1.4.2);
* NotBefore / NotOnOrAfter with a bounded, configured skew, and a maximum assertion age counted from
  IssueInstant, which also holds when the IdP sets no NotOnOrAfter or a distant one;
* the NameID is one text node: a comment or processing instruction inside it is refused, because canonical
  XML drops comments from the signed form and naive readers truncate at them.

The checks the broker owns live in :mod:`broker.connectors.saml_response` (lxml only); this module runs them,
then python3-saml. InResponseTo binding and the replay guard need the database, so :mod:`broker.signin.saml`
does them with the :class:`CheckedResponse` returned here. Attributes are read only by
:meth:`SamlConnector.identity`, after all of that passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit
from xml.sax.saxutils import escape as xml_escape

from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError

from broker.certificates import certificate_body
from broker.connectors.saml_logout import SamlLogout, SessionRef
from broker.connectors.saml_response import (
    BINDING_POST,
    BINDING_REDIRECT,
    NAMEID_TRANSIENT,
    CheckedResponse,
    SamlRejected,
    ServiceProvider,
    decode,
    parse,
    protocol_checks,
)
from broker.errors import ConfigError
from broker.identity import Identity, MfaLevel
from broker.settings import SamlStoreConfig

# python3-saml's error codes, grouped into the broker's audit reasons. Protocol checks the broker owns
# (audience, destination, recipient, issuer, time) are done before the library runs, so what reaches the
# library and fails there is a signature, algorithm, schema or status problem.
_LIBRARY_REASONS: dict[int, str] = {
    OneLogin_Saml2_ValidationError.NO_SIGNED_ASSERTION: "saml.assertion_unsigned",
    OneLogin_Saml2_ValidationError.NO_SIGNED_MESSAGE: "saml.response_unsigned",
    OneLogin_Saml2_ValidationError.DEPRECATED_SIGNATURE_METHOD: "saml.deprecated_algorithm",
    OneLogin_Saml2_ValidationError.DEPRECATED_DIGEST_METHOD: "saml.deprecated_algorithm",
    OneLogin_Saml2_ValidationError.STATUS_CODE_IS_NOT_SUCCESS: "saml.idp_status",
    OneLogin_Saml2_ValidationError.INVALID_XML_FORMAT: "saml.schema_invalid",
    **{
        code: "saml.signature_invalid"
        for code in (
            OneLogin_Saml2_ValidationError.INVALID_SIGNATURE,
            OneLogin_Saml2_ValidationError.NO_SIGNATURE_FOUND,
            OneLogin_Saml2_ValidationError.WRONG_SIGNED_ELEMENT,
            OneLogin_Saml2_ValidationError.ID_NOT_FOUND_IN_SIGNED_ELEMENT,
            OneLogin_Saml2_ValidationError.DUPLICATED_ID_IN_SIGNED_ELEMENTS,
            OneLogin_Saml2_ValidationError.INVALID_SIGNED_ELEMENT,
            OneLogin_Saml2_ValidationError.DUPLICATED_REFERENCE_IN_SIGNED_ELEMENTS,
            OneLogin_Saml2_ValidationError.UNEXPECTED_SIGNED_ELEMENTS,
            OneLogin_Saml2_ValidationError.WRONG_NUMBER_OF_SIGNATURES_IN_RESPONSE,
            OneLogin_Saml2_ValidationError.WRONG_NUMBER_OF_SIGNATURES_IN_ASSERTION,
            OneLogin_Saml2_ValidationError.WRONG_NUMBER_OF_SIGNATURES,
        )
    },
}


@dataclass(frozen=True)
class AuthnRedirect:
    """An SP-initiated sign-in: the AuthnRequest ID to remember, and where to send the browser."""

    request_id: str
    url: str


def normalize_certificate(value: str) -> str:
    """A PEM certificate or its base64 DER body -> PEM; raises ValueError if it is not a certificate."""
    body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----|\s", "", value)
    try:
        certificate_body(body)
    except ValueError as exc:
        raise ValueError(f"not an X.509 certificate: {exc}") from None
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


class SamlConnector:
    """One SAML identity provider. The SP entity id and ACS URL come from ``public_url`` only."""

    kind = "saml"

    def __init__(self, config: SamlStoreConfig, *, public_url: str) -> None:
        self._config = config
        base = f"{public_url.rstrip('/')}/saml/{config.name}"
        self.entity_id = f"{base}/metadata"
        self.acs_url = f"{base}/acs"
        self.slo_url = f"{base}/slo"
        self.idp_entity_id, self.sso_url, self.certificates, idp_slo_url = self._idp_description(config)
        acs = urlsplit(self.acs_url)
        # python3-saml rebuilds "the current URL" from these; they come from configuration, never the request.
        self._request_data = {
            "https": "on" if acs.scheme == "https" else "off",
            "http_host": acs.netloc,
            "script_name": acs.path,
        }
        self._settings: dict[MfaLevel, Any] = {level: self._library_settings(level) for level in MfaLevel}
        self._checked_against = ServiceProvider(
            entity_id=self.entity_id,
            acs_url=self.acs_url,
            idp_entity_id=self.idp_entity_id,
            skew=timedelta(seconds=config.clock_skew_seconds),
            max_age=timedelta(seconds=config.max_assertion_age_seconds),
            level_for=self.level_for,
        )
        # Single logout needs the broker's own signing key; without one there is none, in either direction.
        self.logout: SamlLogout | None = None
        if config.sp_private_key is not None and config.sp_certificate is not None:
            self.logout = SamlLogout(
                sp_entity_id=self.entity_id,
                sp_slo_url=self.slo_url,
                sp_private_key=config.sp_private_key.get_secret_value(),
                sp_certificate=config.sp_certificate,
                idp_entity_id=self.idp_entity_id,
                idp_slo_url=idp_slo_url,
                certificates=self.certificates,
                request_data={**self._request_data, "script_name": urlsplit(self.slo_url).path},
                max_age=timedelta(seconds=config.max_assertion_age_seconds),
                skew=timedelta(seconds=config.clock_skew_seconds),
            )

    # ------------------------------------------------------------ configuration

    @staticmethod
    def _idp_description(config: SamlStoreConfig) -> tuple[str, str, list[str], str | None]:
        where = f"identity_stores.{config.name}"
        entity_id, sso_url, certs = config.idp_entity_id, config.sso_url, list(config.certificates)
        slo_url = config.slo_url
        if config.metadata_file is not None:
            try:
                parsed = OneLogin_Saml2_IdPMetadataParser.parse(
                    config.metadata_file.read_bytes(), entity_id=config.idp_entity_id
                ).get("idp", {})
            except Exception as exc:  # python3-saml raises bare Exceptions for bad metadata
                raise ConfigError([(f"{where}.metadata_file", f"not usable IdP metadata: {exc}")]) from None
            entity_id = entity_id or parsed.get("entityId")
            sso_url = sso_url or parsed.get("singleSignOnService", {}).get("url")
            slo = parsed.get("singleLogoutService", {})
            if slo_url is None and slo.get("binding") == BINDING_REDIRECT:
                slo_url = slo.get("url")
            if not certs:
                multi = parsed.get("x509certMulti", {}).get("signing") or []
                certs = list(multi) or ([parsed["x509cert"]] if parsed.get("x509cert") else [])
        problems = []
        if not entity_id:
            problems.append((f"{where}.idp_entity_id", "not set and not found in the metadata"))
        if not sso_url or not re.match(r"^https?://", sso_url):
            problems.append((f"{where}.sso_url", "not set (or not http/https) and not found in the metadata"))
        if not certs:
            problems.append((f"{where}.certificates", "no signing certificate configured or found in metadata"))
        pems = []
        for index, cert in enumerate(certs):
            try:
                pems.append(normalize_certificate(cert))
            except ValueError as exc:
                problems.append((f"{where}.certificates[{index}]", str(exc)))
        if problems:
            raise ConfigError(problems)
        assert entity_id and sso_url
        return entity_id, sso_url, pems, slo_url

    def _requested_contexts(self, level: MfaLevel) -> list[str]:
        mapping, step_up = self._config.authn_context, self._config.step_up
        if level == MfaLevel.PHISHING_RESISTANT:
            return list(step_up.phishing_resistant or mapping.phishing_resistant)
        if level == MfaLevel.MFA:
            return list(step_up.mfa or [*mapping.mfa, *mapping.phishing_resistant])
        return []

    def _library_settings(self, level: MfaLevel) -> Any:
        requested = self._requested_contexts(level)
        sp: dict[str, Any] = {
            "entityId": self.entity_id,
            "assertionConsumerService": {"url": self.acs_url, "binding": BINDING_POST},
            # In the metadata and in every AuthnRequest's NameIDPolicy (core 3.4.1.1).
            "NameIDFormat": self._config.name_id_format,
        }
        if self._config.sp_certificate is not None:
            # Metadata section 2.4.4: where the IdP sends LogoutRequests, and the key that signs ours.
            sp["singleLogoutService"] = {"url": self.slo_url, "binding": BINDING_REDIRECT}
            sp["x509cert"] = self._config.sp_certificate
        return OneLogin_Saml2_Settings(
            {
                "strict": True,
                "debug": False,
                "sp": sp,
                "idp": {
                    "entityId": self.idp_entity_id,
                    "singleSignOnService": {"url": self.sso_url, "binding": BINDING_REDIRECT},
                    "x509cert": self.certificates[0],
                    "x509certMulti": {"signing": self.certificates},
                },
                "security": {
                    "authnRequestsSigned": False,
                    "wantAssertionsSigned": True,
                    "wantMessagesSigned": self._config.want_response_signed,
                    "wantAssertionsEncrypted": False,
                    "wantNameId": True,
                    "wantNameIdEncrypted": False,
                    "wantAttributeStatement": False,
                    "rejectDeprecatedAlgorithm": True,
                    "allowRepeatAttributeName": False,
                    "requestedAuthnContext": requested or False,
                    "requestedAuthnContextComparison": "exact",
                    # The broker compares the asserted context with what it requested itself.
                    "failOnAuthnContextMismatch": False,
                    "signatureAlgorithm": OneLogin_Saml2_Constants.RSA_SHA256,
                    "digestAlgorithm": OneLogin_Saml2_Constants.SHA256,
                },
            },
            sp_validation_only=True,
        )

    # ------------------------------------------------------------ Connector

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def display_name(self) -> str:
        return self._config.display_name

    @property
    def start_path(self) -> str:
        """Where the sign-in page sends the browser to start a sign-in with this IdP."""
        return f"/saml/{self.name}/login"

    @property
    def allow_idp_initiated(self) -> bool:
        return self._config.allow_idp_initiated

    def metadata_xml(self) -> str:
        """SP metadata (metadata section 2.4.4) for registering the broker at the IdP."""
        xml = self._settings[MfaLevel.NONE].get_sp_metadata()
        return xml.decode() if isinstance(xml, bytes) else str(xml)

    def authn_request(self, *, level: MfaLevel = MfaLevel.NONE, login_hint: str | None = None) -> AuthnRedirect:
        """An AuthnRequest over the HTTP-Redirect binding; above ``none`` it carries RequestedAuthnContext
        (core section 3.3.2.2.1) and ForceAuthn, so the IdP re-authenticates with the stronger factor.

        With ``subject_hint`` configured, ``login_hint`` (the address home realm discovery was given) goes in
        ``<Subject><NameID>`` (core section 3.4.1). python3-saml pastes that value into the XML unescaped, so
        it is escaped here.
        """
        settings = self._settings[level]
        hint = xml_escape(login_hint) if login_hint and self._config.subject_hint else None
        request = OneLogin_Saml2_Authn_Request(settings, force_authn=level > MfaLevel.NONE, name_id_value_req=hint)
        separator = "&" if "?" in self.sso_url else "?"
        url = self.sso_url + separator + urlencode({"SAMLRequest": request.get_request()})
        return AuthnRedirect(request_id=request.get_id(), url=url)

    def level_for(self, class_refs: tuple[str, ...]) -> MfaLevel:
        mapping = self._config.authn_context
        if any(ref in mapping.phishing_resistant for ref in class_refs):
            return MfaLevel.PHISHING_RESISTANT
        if any(ref in mapping.mfa for ref in class_refs):
            return MfaLevel.MFA
        return MfaLevel.NONE

    # ------------------------------------------------------------ verification

    def check(self, saml_response: str, *, now: datetime) -> CheckedResponse:
        """Run every check that needs no database; raise :class:`SamlRejected` (or a 4xx) on the first failure."""
        checked = protocol_checks(parse(decode(saml_response)), now, sp=self._checked_against)
        return replace(checked, _response=self._library_checks(saml_response))

    def _library_checks(self, saml_response: str) -> Any:
        """python3-saml's strict validation: schema, pinned-certificate signatures, algorithms, status."""
        try:
            response = OneLogin_Saml2_Response(self._settings[MfaLevel.NONE], saml_response)
            response.is_valid(self._request_data, request_id=None, raise_exceptions=True)
        except OneLogin_Saml2_ValidationError as exc:
            reason = _LIBRARY_REASONS.get(exc.code, "saml.invalid")
            raise SamlRejected(reason, library_error=str(exc)) from None
        except (OneLogin_Saml2_Error, Exception) as exc:  # the library raises bare Exceptions on odd input
            raise SamlRejected("saml.invalid", library_error=f"{type(exc).__name__}: {exc}") from None
        return response

    # ------------------------------------------------------------ identity (after every check)

    def identity(self, checked: CheckedResponse) -> Identity:
        """Read NameID and attributes from the verified response. Call only after every check passed."""
        response = checked._response
        try:
            name_id = response.get_nameid()
            attributes: Mapping[str, list[Any]] = response.get_attributes()
        except OneLogin_Saml2_ValidationError as exc:
            raise SamlRejected("saml.attributes_invalid", library_error=str(exc)) from None
        names = self._config.attributes
        values: dict[str, list[str]] = {
            key: [v for v in vals if isinstance(v, str)] for key, vals in attributes.items()
        }
        every = [name_id or "", *[v for vals in values.values() for v in vals], *values]
        if any("\x00" in v for v in every):
            raise SamlRejected("saml.nul_character", library_error="NUL character in an identity value")

        def first(key: str | None) -> str | None:
            found = values.get(key) if key else None
            return found[0] if found else None

        subject = self._subject(name_id, response.get_nameid_format(), values)
        username = first(names.username) if names.username else subject
        if not name_id or not username:
            raise SamlRejected("saml.attributes_invalid", library_error="no NameID or username attribute")
        groups = frozenset(values.get(names.groups, [])) if names.groups else frozenset()
        return Identity(
            subject=subject,
            issuer=checked.issuer,
            store=self.name,
            username=username,
            email=first(names.email),
            groups=groups,
            attributes={key: vals[0] for key, vals in values.items() if len(vals) == 1},
            mfa=checked.mfa,
        )

    def _subject(self, name_id: str | None, name_id_format: str | None, values: Mapping[str, list[str]]) -> str:
        """The stable subject: an attribute named by ``subject: attr.NAME``, or a NameID that is not transient.

        A transient NameID (core 8.3.8) is a fresh random value at every sign-in: taken as the subject, each
        sign-in would create a new principal, and factors, lockout, revocation and the audit trail would not
        follow the person.
        """
        attribute = self._config.subject_attribute
        if attribute is not None:
            found = values.get(attribute) or []
            if len(found) != 1 or not found[0].strip():
                raise SamlRejected(
                    "saml.subject_attribute_missing",
                    f"The identity provider did not send the attribute {attribute!r} that identifies you here "
                    "(exactly one value). Ask your administrator to release it to this service.",
                    library_error=f"subject attribute {attribute!r}: {len(found)} values; sent {sorted(values)}",
                )
            return found[0]
        if name_id_format == NAMEID_TRANSIENT:
            raise SamlRejected(
                "saml.nameid_transient",
                "The identity provider sent a one-time (transient) identifier, which cannot identify you from one "
                "sign-in to the next. An administrator must make the identity provider send a persistent NameID, "
                "or set this store's `subject: attr.NAME` to an attribute that names you.",
                library_error=f"transient NameID and subject: name_id (asked for {self._config.name_id_format})",
            )
        return name_id or ""

    def attribute_report(self, checked: CheckedResponse) -> tuple[list[str], list[str]]:
        """Configured attribute names the response did not carry, and the names it did carry (sorted).

        Call after :meth:`identity` succeeded. A store mapping ``email`` while the IdP sends
        ``urn:oid:0.9.2342.19200300.100.1.3`` signs the person in with no email, groups or roles: this says why.
        """
        present = sorted(checked._response.get_attributes())
        names = self._config.attributes
        configured = [n for n in (names.username, names.email, names.groups, self._config.subject_attribute) if n]
        absent = sorted({n for n in configured if n not in present})
        return absent, present

    def session_ref(self, checked: CheckedResponse) -> SessionRef:
        """The NameID (with its qualifiers) and SessionIndex a LogoutRequest for this sign-in must name."""
        response = checked._response
        data = response.get_nameid_data()
        return SessionRef(
            name_id=str(data.get("Value") or ""),
            name_id_format=data.get("Format"),
            name_qualifier=data.get("NameQualifier"),
            sp_name_qualifier=data.get("SPNameQualifier"),
            session_index=response.get_session_index(),
        )
