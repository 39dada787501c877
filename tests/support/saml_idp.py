"""A real SAML 2.0 identity provider used as a test peer.

The IdP side is pysaml2's :class:`saml2.server.Server`, signing with Debian's
``xmlsec1`` binary, so the broker is tested against responses produced by an
independent, widely deployed SAML implementation rather than by hand-written XML.

Two layers are provided:

* :class:`SamlIdp` -- an in-process IdP. ``make_response`` returns the XML of a
  signed ``samlp:Response`` with full control over the security-relevant fields
  (audience, destination, recipient, issuer, clock, lifetime, algorithms), so a
  broker test can build exactly the response it needs.
* :class:`SamlIdpServer` -- the same IdP behind a small HTTP server on
  127.0.0.1 with an accessible login form, for end-to-end tests (httpx or a
  browser): ``GET /idp/sso`` (HTTP-Redirect binding) -> login form ->
  ``POST /idp/login`` -> an HTML form that POSTs ``SAMLResponse`` to the ACS.

``make_keypair`` creates throwaway RSA keys/certificates; :func:`xmlsec1_verify`
checks a signature with the ``xmlsec1`` command-line tool.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import html
import os
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NotRequired, TypedDict
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import quoteattr

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT, saml, samlp, time_util
from saml2.assertion import Policy
from saml2.attribute_converter import AttributeConverter
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.s_utils import do_ava, factory
from saml2.server import Server
from saml2.sigver import get_xmlsec_binary

__all__ = [
    "AC_MFA",
    "AC_PASSWORD",
    "AC_PASSWORD_PROTECTED_TRANSPORT",
    "DIGEST_SHA1",
    "DIGEST_SHA256",
    "SIG_RSA_SHA1",
    "SIG_RSA_SHA256",
    "IssuedResponse",
    "ParsedAuthnRequest",
    "SamlIdp",
    "SamlIdpServer",
    "SamlUser",
    "cert_base64",
    "make_keypair",
    "xmlsec1_verify",
]

XMLSEC1 = "/usr/bin/xmlsec1"

SIG_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
SIG_RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
DIGEST_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
DIGEST_SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"

AC_PASSWORD_PROTECTED_TRANSPORT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
AC_PASSWORD = "urn:oasis:names:tc:SAML:2.0:ac:classes:Password"
#: A multi-factor class ref as sent by common IdPs (REFEDS MFA profile).
AC_MFA = "https://refeds.org/profile/mfa"

NAMEID_FORMAT_EMAILADDRESS = saml.NAMEID_FORMAT_EMAILADDRESS
NAMEID_FORMAT_UNSPECIFIED = saml.NAMEID_FORMAT_UNSPECIFIED

_SAML_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


# --------------------------------------------------------------------------- keys


def make_keypair(common_name: str) -> tuple[bytes, bytes]:
    """Create an RSA-2048 key and a self-signed certificate for ``common_name``.

    The certificate is valid from one day ago until one year from now.
    Returns ``(key_pem, cert_pem)``; the key is unencrypted PKCS#8 PEM.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def cert_base64(cert_pem: bytes) -> str:
    """The base64 DER body of a PEM certificate (as used in metadata and onelogin settings)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def xmlsec1_verify(xml: str | bytes, cert_pem: bytes, element_id: str) -> bool:
    """Verify, with ``xmlsec1 --verify``, the ds:Signature that is a direct child of the
    (first) element whose ``ID`` attribute is ``element_id``.

    Uses the same restrictions as pysaml2 (same-document references only, key taken
    from ``cert_pem``, never from the document's KeyInfo). Returns True when the
    element has such a signature and xmlsec1 reports it OK. Note that this checks
    the signature cryptographically only: xmlsec1 resolves its Reference by ID,
    which need not be ``element_id`` (that is exactly what XSW attacks abuse).
    """
    if "'" in element_id:
        raise ValueError("element_id must not contain a quote")
    node_xpath = (
        f"//*[@ID='{element_id}']/*[local-name()='Signature' and namespace-uri()='http://www.w3.org/2000/09/xmldsig#']"
    )
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    with tempfile.TemporaryDirectory(prefix="xmlsec1-verify-") as tmp:
        doc_path = os.path.join(tmp, "doc.xml")
        cert_path = os.path.join(tmp, "cert.pem")
        with open(doc_path, "wb") as fh:
            fh.write(data)
        with open(cert_path, "wb") as fh:
            fh.write(cert_pem)
        proc = subprocess.run(
            [
                XMLSEC1,
                "--verify",
                "--enabled-reference-uris",
                "empty,same-doc",
                "--enabled-key-data",
                "raw-x509-cert",
                "--pubkey-cert-pem",
                cert_path,
                "--id-attr:ID",
                "urn:oasis:names:tc:SAML:2.0:protocol:Response",
                "--id-attr:ID",
                "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
                "--node-xpath",
                node_xpath,
                doc_path,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    return proc.returncode == 0 and "OK" in proc.stderr


# --------------------------------------------------------------- pysaml2 helpers


_CLOCK_LOCK = threading.RLock()


@contextmanager
def _saml2_clock(now: dt.datetime | None) -> Iterator[None]:
    """Serialise pysaml2 response generation and, if ``now`` is given, freeze its clock.

    pysaml2 reads the wall clock through ``saml2.time_util.time.gmtime()`` for the
    Response/Assertion ``IssueInstant`` and the ``AuthnInstant``; there is no
    parameter for them, so the module reference is swapped for the duration of the
    call. The lock keeps concurrent callers (e.g. the HTTP server thread) out.
    """
    with _CLOCK_LOCK:
        if now is None:
            yield
            return
        frozen = now.timestamp()
        real_time = time_util.time

        class _FrozenTime:
            def __getattr__(self, name: str) -> Any:
                return getattr(real_time, name)

            @staticmethod
            def gmtime(secs: float | None = None) -> time.struct_time:
                return time.gmtime(frozen if secs is None else secs)

        time_util.time = _FrozenTime()
        try:
            yield
        finally:
            time_util.time = real_time


class _VerbatimAttributeConverter(AttributeConverter):  # type: ignore[misc]
    """Emit attributes with exactly the names the test gave.

    pysaml2's default converters rename friendly names (``mail`` becomes
    ``urn:oid:0.9.2342.19200300.100.1.3``). A broker test wants to control the wire
    names, so names are kept verbatim: ``NameFormat`` is ``uri`` when the name
    contains a colon and ``basic`` otherwise.
    """

    def __init__(self) -> None:
        super().__init__(saml.NAME_FORMAT_URI)
        self._to: dict[str, str] = {}
        self._fro: dict[str, str] = {}

    def to_(self, attrvals: Mapping[str, Sequence[str]]) -> list[saml.Attribute]:
        return [
            factory(
                saml.Attribute,
                name=name,
                name_format=saml.NAME_FORMAT_URI if ":" in name else saml.NAME_FORMAT_BASIC,
                attribute_value=do_ava(list(values)),
            )
            for name, values in attrvals.items()
        ]


class _ResponsePolicy(Policy):  # type: ignore[misc]
    """A release policy that pins the ``Conditions`` and ``SubjectConfirmationData`` times.

    Also lets a test put an arbitrary audience in the ``AudienceRestriction``.
    """

    def __init__(
        self, *, mds: Any, audience: str, not_before: str, not_on_or_after: str, subject_not_on_or_after: str
    ) -> None:
        super().__init__(restrictions=None, mds=mds)
        self._audience = audience
        self._not_before = not_before
        self._not_on_or_after = not_on_or_after
        self._subject_not_on_or_after = subject_not_on_or_after

    def conditions(self, sp_entity_id: str) -> saml.Conditions:
        return factory(
            saml.Conditions,
            not_before=self._not_before,
            not_on_or_after=self._not_on_or_after,
            audience_restriction=[
                factory(saml.AudienceRestriction, audience=[factory(saml.Audience, text=self._audience)])
            ],
        )

    def not_on_or_after(self, sp_entity_id: str) -> str:
        return self._subject_not_on_or_after


def _fmt(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(_SAML_TIME_FORMAT)


def _sp_metadata(sp_entity_id: str, sp_acs_url: str) -> str:
    return (
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        f"entityID={quoteattr(sp_entity_id)}>"
        '<md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol" '
        'AuthnRequestsSigned="false" WantAssertionsSigned="true">'
        f"<md:NameIDFormat>{NAMEID_FORMAT_EMAILADDRESS}</md:NameIDFormat>"
        f'<md:AssertionConsumerService Binding="{BINDING_HTTP_POST}" '
        f'Location={quoteattr(sp_acs_url)} index="0" isDefault="true"/>'
        "</md:SPSSODescriptor></md:EntityDescriptor>"
    )


@dataclass(frozen=True)
class ParsedAuthnRequest:
    """The fields of an AuthnRequest that the IdP acts on."""

    request_id: str
    acs_url: str | None
    requested_authn_context: list[str] | None
    comparison: str
    issuer: str | None
    relay_state: str | None


# ------------------------------------------------------------------------ the IdP


class SamlIdp:
    """An in-process SAML 2.0 IdP (pysaml2 ``Server``) configured from code.

    Entity ID is ``{base_url}/idp``; the SSO endpoint ``{base_url}/idp/sso`` uses the
    HTTP-Redirect binding. The signing key/cert are written to a private temporary
    directory because pysaml2/xmlsec1 read them from files; it is removed when the
    object is garbage collected or :meth:`close` is called.
    """

    def __init__(
        self,
        sp_entity_id: str,
        sp_acs_url: str,
        *,
        base_url: str = "http://127.0.0.1:8079",
        signing_alg: str = SIG_RSA_SHA256,
        digest_alg: str = DIGEST_SHA256,
        key_pem: bytes | None = None,
        cert_pem: bytes | None = None,
        name_id_format: str = NAMEID_FORMAT_EMAILADDRESS,
    ) -> None:
        self.sp_entity_id = sp_entity_id
        self.sp_acs_url = sp_acs_url
        self.base_url = base_url.rstrip("/")
        self.entity_id = f"{self.base_url}/idp"
        self.sso_url = f"{self.base_url}/idp/sso"
        self.signing_alg = signing_alg
        self.digest_alg = digest_alg
        self.name_id_format = name_id_format
        if (key_pem is None) != (cert_pem is None):
            raise ValueError("pass both key_pem and cert_pem, or neither")
        if key_pem is None or cert_pem is None:
            key_pem, cert_pem = make_keypair("test-idp")
        self.key_pem: bytes = key_pem
        self.cert_pem: bytes = cert_pem

        self._tmpdir = tempfile.TemporaryDirectory(prefix="saml-idp-")
        self._finalizer = weakref.finalize(self, self._tmpdir.cleanup)
        key_file = os.path.join(self._tmpdir.name, "idp.key")
        cert_file = os.path.join(self._tmpdir.name, "idp.crt")
        with open(key_file, "wb") as fh:
            fh.write(key_pem)
        os.chmod(key_file, 0o600)
        with open(cert_file, "wb") as fh:
            fh.write(cert_pem)

        xmlsec_binary = XMLSEC1 if os.path.exists(XMLSEC1) else get_xmlsec_binary()
        config = IdPConfig().load(
            {
                "entityid": self.entity_id,
                "name": "Test IdP",
                "xmlsec_binary": xmlsec_binary,
                "crypto_backend": "xmlsec1",
                "key_file": key_file,
                "cert_file": cert_file,
                "metadata": {"inline": [_sp_metadata(sp_entity_id, sp_acs_url)]},
                "signing_algorithm": signing_alg,
                "digest_algorithm": digest_alg,
                "delete_tmpfiles": True,
                "service": {
                    "idp": {
                        "name": "Test IdP",
                        "endpoints": {"single_sign_on_service": [(self.sso_url, BINDING_HTTP_REDIRECT)]},
                        "name_id_format": [name_id_format],
                        "want_authn_requests_signed": False,
                        "policy": {"default": {"lifetime": {"minutes": 5}, "name_form": saml.NAME_FORMAT_URI}},
                    }
                },
            }
        )
        self._server = Server(config=config)
        self._server.config.attribute_converters = [_VerbatimAttributeConverter()]

    # -- metadata ---------------------------------------------------------------

    def close(self) -> None:
        """Remove the temporary key/cert files."""
        self._finalizer()

    def metadata_xml(self) -> str:
        """IdP metadata (``md:EntityDescriptor``) with the signing certificate and SSO endpoint."""
        xml = create_metadata_string(None, config=self._server.config, sign=False)
        return xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)

    @property
    def cert_base64(self) -> str:
        """The signing certificate as base64 DER (onelogin ``x509cert`` format)."""
        return cert_base64(self.cert_pem)

    # -- responses --------------------------------------------------------------

    def make_response(
        self,
        *,
        name_id: str,
        attributes: Mapping[str, Sequence[str]] | None = None,
        in_response_to: str | None,
        authn_context_class_ref: str = AC_PASSWORD_PROTECTED_TRANSPORT,
        sign_response: bool = True,
        sign_assertion: bool = True,
        audience: str | None = None,
        destination: str | None = None,
        recipient: str | None = None,
        issuer: str | None = None,
        now: dt.datetime | None = None,
        issue_instant: dt.datetime | None = None,
        not_before: dt.datetime | None = None,
        not_on_or_after: dt.datetime | None = None,
        subject_not_on_or_after: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
        authn_instant: dt.datetime | None = None,
        session_not_on_or_after: dt.datetime | None = None,
        name_id_format: str | None = None,
        signing_alg: str | None = None,
        digest_alg: str | None = None,
    ) -> str:
        """Return the XML (not base64) of a signed ``samlp:Response`` built by pysaml2.

        Produced by ``Server.create_authn_response`` with its ``sign_response`` /
        ``sign_assertion`` arguments (signed with xmlsec1 and the IdP key).

        Defaults model a correct response to the configured SP: audience =
        ``sp_entity_id``, Destination and Recipient = ``sp_acs_url``, Issuer = this
        IdP, issued now and valid for ``lifetime``. Overrides, for hostile tests:

        * ``now`` / ``issue_instant`` (synonyms; ``issue_instant`` wins): the clock
          used for IssueInstant, AuthnInstant and as the base of NotBefore and
          NotOnOrAfter -- e.g. ``now=utcnow() - 1h`` gives an expired response.
        * ``not_before``, ``not_on_or_after`` (Conditions) and
          ``subject_not_on_or_after`` (SubjectConfirmationData; defaults to
          ``not_on_or_after``): explicit validity window.
        * ``audience``, ``destination``, ``recipient``, ``issuer``: wrong-party tests.
        * ``signing_alg`` / ``digest_alg``: e.g. :data:`SIG_RSA_SHA1` /
          :data:`DIGEST_SHA1` for a deprecated-algorithm response.
        * ``in_response_to=None`` gives an unsolicited (IdP-initiated) response.
        """
        base = issue_instant or now or dt.datetime.now(dt.UTC)
        if base.tzinfo is None:
            raise ValueError("datetimes must be timezone-aware")
        cond_not_on_or_after = not_on_or_after or base + lifetime
        policy = _ResponsePolicy(
            mds=self._server.metadata,
            audience=audience or self.sp_entity_id,
            not_before=_fmt(not_before or base),
            not_on_or_after=_fmt(cond_not_on_or_after),
            subject_not_on_or_after=_fmt(subject_not_on_or_after or cond_not_on_or_after),
        )
        subject_confirmation_data: dict[str, Any] = {"recipient": recipient or self.sp_acs_url}
        if in_response_to is not None:
            subject_confirmation_data["in_response_to"] = in_response_to
        farg = {
            "assertion": {
                "subject": {
                    "subject_confirmation": {
                        "method": saml.SCM_BEARER,
                        "subject_confirmation_data": subject_confirmation_data,
                    }
                }
            }
        }
        authn = {
            "class_ref": authn_context_class_ref,
            "authn_instant": int((authn_instant or base).timestamp()),
        }
        name_id_obj = saml.NameID(format=name_id_format or self.name_id_format, text=name_id)
        with _saml2_clock(base):
            response = self._server.create_authn_response(
                identity={k: list(v) for k, v in (attributes or {}).items()},
                in_response_to=in_response_to,
                destination=destination or self.sp_acs_url,
                sp_entity_id=self.sp_entity_id,
                name_id=name_id_obj,
                authn=authn,
                issuer=issuer,
                sign_response=sign_response,
                sign_assertion=sign_assertion,
                sign_alg=signing_alg or self.signing_alg,
                digest_alg=digest_alg or self.digest_alg,
                release_policy=policy,
                farg=farg,
                session_not_on_or_after=_fmt(session_not_on_or_after) if session_not_on_or_after else None,
            )
        return _strip_xml_declaration(str(response))

    def make_error_response(
        self, *, in_response_to: str | None, status_code: str, message: str | None = None, sign: bool = True
    ) -> str:
        """A signed ``samlp:Response`` with a Responder top-level status and ``status_code`` second level.

        E.g. ``status_code=samlp.STATUS_NO_AUTHN_CONTEXT`` or ``STATUS_AUTHN_FAILED``.
        """
        with _saml2_clock(None):
            response = self._server.create_error_response(
                in_response_to,
                self.sp_acs_url,
                (status_code, message),
                sign=sign,
                sign_alg=self.signing_alg,
                digest_alg=self.digest_alg,
            )
        return _strip_xml_declaration(str(response))

    @staticmethod
    def post_form_fields(xml: str, relay_state: str | None) -> dict[str, str]:
        """HTTP-POST binding form fields: base64 ``SAMLResponse`` and ``RelayState`` (if any)."""
        fields = {"SAMLResponse": base64.b64encode(xml.encode("utf-8")).decode("ascii")}
        if relay_state is not None:
            fields["RelayState"] = relay_state
        return fields

    # -- requests ---------------------------------------------------------------

    def parse_authn_request_full(self, saml_request: str, relay_state: str | None) -> ParsedAuthnRequest:
        """Decode an HTTP-Redirect ``SAMLRequest`` value (deflated, base64) with pysaml2."""
        req = self._server.parse_authn_request(saml_request, BINDING_HTTP_REDIRECT, relay_state=relay_state)
        message: samlp.AuthnRequest = req.message
        classes: list[str] | None = None
        comparison = "exact"
        rac = message.requested_authn_context
        if rac is not None:
            classes = [ref.text.strip() for ref in rac.authn_context_class_ref if ref.text]
            comparison = rac.comparison or "exact"
        return ParsedAuthnRequest(
            request_id=message.id,
            acs_url=message.assertion_consumer_service_url,
            requested_authn_context=classes or None,
            comparison=comparison,
            issuer=message.issuer.text.strip() if message.issuer is not None and message.issuer.text else None,
            relay_state=relay_state,
        )

    def parse_authn_request(
        self, saml_request_query_value: str, relay_state: str | None
    ) -> tuple[str, str | None, list[str] | None]:
        """Return ``(request_id, acs_url, requested_authn_context class refs or None)``.

        ``saml_request_query_value`` is the (URL-decoded) ``SAMLRequest`` query parameter
        of the HTTP-Redirect binding.
        """
        parsed = self.parse_authn_request_full(saml_request_query_value, relay_state)
        return parsed.request_id, parsed.acs_url, parsed.requested_authn_context


def _strip_xml_declaration(xml: str) -> str:
    xml = xml.lstrip()
    if xml.startswith("<?xml"):
        xml = xml[xml.index("?>") + 2 :].lstrip()
    return xml


# ------------------------------------------------------------------ HTTP server


class SamlUser(TypedDict):
    """A user of :class:`SamlIdpServer`.

    ``authn_context`` is the class ref of a normal sign-in (default
    PasswordProtectedTransport); ``step_up_authn_context`` is a stronger class the
    user can also satisfy when the SP requests it (e.g. :data:`AC_MFA`).
    ``name_id`` defaults to the username.
    """

    password: str
    attributes: NotRequired[dict[str, list[str]]]
    authn_context: NotRequired[str]
    step_up_authn_context: NotRequired[str]
    name_id: NotRequired[str]


@dataclass
class IssuedResponse:
    """Record of a response the server handed to a browser."""

    username: str
    request_id: str
    relay_state: str | None
    authn_context_class_ref: str | None
    xml: str


_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title></head>
<body><main>
{body}
</main></body>
</html>
"""


class SamlIdpServer:
    """A :class:`SamlIdp` served over HTTP on 127.0.0.1 (free port), in a thread.

    Routes:

    * ``GET /idp/sso?SAMLRequest=..&RelayState=..`` -- HTTP-Redirect binding
      endpoint; renders the login form (labelled ``username``/``password``
      inputs, "Sign in" button). The request is carried in hidden fields.
    * ``POST /idp/login`` -- checks the credentials against ``users``; on success
      renders a page whose form POSTs ``SAMLResponse``/``RelayState`` to the SP ACS
      URL with a visible "Continue" button (no JavaScript needed; set
      ``auto_submit=True`` to add a tiny auto-submit script). Wrong credentials
      re-render the form with an ``role="alert"`` error and HTTP 401.
    * ``GET /idp/metadata`` -- the IdP metadata XML.

    Authentication context: when the AuthnRequest has a RequestedAuthnContext the
    first requested class the user can satisfy (``authn_context`` or
    ``step_up_authn_context``) is asserted. If none can be satisfied the server
    answers with a signed ``NoAuthnContext`` error response
    (``unsatisfiable_authn_context="error"``, the SAML-conformant behaviour) or
    asserts the user's normal class anyway (``"downgrade"``, a misbehaving IdP).

    The bound address is known right after construction (``entity_id``,
    ``sso_url``); serving starts on ``__enter__``/:meth:`start`.
    """

    def __init__(
        self,
        sp_entity_id: str,
        sp_acs_url: str,
        users: Mapping[str, SamlUser],
        *,
        auto_submit: bool = False,
        unsatisfiable_authn_context: Literal["error", "downgrade"] = "error",
        **idp_kwargs: Any,
    ) -> None:
        self.users: dict[str, SamlUser] = dict(users)
        self.auto_submit = auto_submit
        self.unsatisfiable_authn_context = unsatisfiable_authn_context
        self.issued: list[IssuedResponse] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self.base_url = f"http://{host!s}:{port}"
        self.idp = SamlIdp(sp_entity_id, sp_acs_url, base_url=self.base_url, **idp_kwargs)
        self._thread: threading.Thread | None = None

    # -- convenience accessors --------------------------------------------------

    @property
    def entity_id(self) -> str:
        return self.idp.entity_id

    @property
    def sso_url(self) -> str:
        return self.idp.sso_url

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/idp/metadata"

    @property
    def cert_pem(self) -> bytes:
        return self.idp.cert_pem

    @property
    def key_pem(self) -> bytes:
        return self.idp.key_pem

    def metadata_xml(self) -> str:
        return self.idp.metadata_xml()

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> SamlIdpServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="saml-idp", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
        self.idp.close()

    def __enter__(self) -> SamlIdpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviour ----------------------------------------------------------------

    def choose_authn_context(self, user: SamlUser, requested: Sequence[str] | None) -> str | None:
        """The class ref to assert for ``user``, or None if ``requested`` cannot be met."""
        normal = user.get("authn_context", AC_PASSWORD_PROTECTED_TRANSPORT)
        if not requested:
            return normal
        available = [normal, *([user["step_up_authn_context"]] if "step_up_authn_context" in user else [])]
        for wanted in requested:
            if wanted in available:
                return wanted
        return normal if self.unsatisfiable_authn_context == "downgrade" else None

    def login_page(self, saml_request: str, relay_state: str | None, *, error: str | None = None) -> str:
        esc = html.escape
        hidden = f'<input type="hidden" name="SAMLRequest" value="{esc(saml_request)}">'
        if relay_state is not None:
            hidden += f'\n<input type="hidden" name="RelayState" value="{esc(relay_state)}">'
        alert = f'<p role="alert" id="login-error">{esc(error)}</p>\n' if error else ""
        body = f"""<h1>Sign in to Test IdP</h1>
{alert}<form method="post" action="/idp/login">
{hidden}
<p><label for="username">Username</label>
<input id="username" name="username" type="text" autocomplete="username" required></p>
<p><label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required></p>
<button type="submit">Sign in</button>
</form>"""
        return _PAGE.format(title="Sign in - Test IdP", body=body)

    def post_page(self, acs_url: str, fields: Mapping[str, str]) -> str:
        esc = html.escape
        inputs = "\n".join(
            f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">' for name, value in fields.items()
        )
        script = "\n<script>document.getElementById('saml-post').submit();</script>" if self.auto_submit else ""
        body = f"""<h1>Signed in</h1>
<p>Continue to the application to finish signing in.</p>
<form id="saml-post" method="post" action="{esc(acs_url)}">
{inputs}
<button type="submit">Continue</button>
</form>{script}"""
        return _PAGE.format(title="Continue - Test IdP", body=body)

    def handle_login(self, form: Mapping[str, str]) -> tuple[int, str]:
        """Process ``POST /idp/login``; returns (HTTP status, HTML)."""
        saml_request = form.get("SAMLRequest", "")
        relay_state = form.get("RelayState")
        try:
            request = self.idp.parse_authn_request_full(saml_request, relay_state)
        except Exception as exc:  # malformed request: the IdP refuses
            return HTTPStatus.BAD_REQUEST, _error_page(f"Invalid SAMLRequest: {type(exc).__name__}")
        acs_url = request.acs_url or self.idp.sp_acs_url
        if acs_url != self.idp.sp_acs_url:
            return HTTPStatus.BAD_REQUEST, _error_page("AssertionConsumerServiceURL is not registered")

        username = form.get("username", "")
        user = self.users.get(username)
        if user is None or not _consteq(user["password"], form.get("password", "")):
            page = self.login_page(saml_request, relay_state, error="Invalid username or password.")
            return HTTPStatus.UNAUTHORIZED, page

        class_ref = self.choose_authn_context(user, request.requested_authn_context)
        if class_ref is None:
            xml = self.idp.make_error_response(
                in_response_to=request.request_id,
                status_code=samlp.STATUS_NO_AUTHN_CONTEXT,
                message="The requested authentication context cannot be satisfied",
            )
        else:
            xml = self.idp.make_response(
                name_id=user.get("name_id", username),
                attributes=user.get("attributes", {}),
                in_response_to=request.request_id,
                authn_context_class_ref=class_ref,
            )
        self.issued.append(IssuedResponse(username, request.request_id, relay_state, class_ref, xml))
        return HTTPStatus.OK, self.post_page(acs_url, self.idp.post_form_fields(xml, relay_state))


def _consteq(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _error_page(message: str) -> str:
    return _PAGE.format(title="Error - Test IdP", body=f'<h1>Error</h1>\n<p role="alert">{html.escape(message)}</p>')


@dataclass
class _Reply:
    status: int
    body: str
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _make_handler(owner: SamlIdpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "TestSamlIdP/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            return

        def _send(self, reply: _Reply) -> None:
            data = reply.body.encode("utf-8")
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            if url.path == "/idp/sso":
                saml_request = query.get("SAMLRequest")
                if not saml_request:
                    self._send(_Reply(HTTPStatus.BAD_REQUEST, _error_page("Missing SAMLRequest")))
                    return
                try:
                    owner.idp.parse_authn_request_full(saml_request, query.get("RelayState"))
                except Exception as exc:
                    msg = f"Invalid SAMLRequest: {type(exc).__name__}"
                    self._send(_Reply(HTTPStatus.BAD_REQUEST, _error_page(msg)))
                    return
                self._send(_Reply(HTTPStatus.OK, owner.login_page(saml_request, query.get("RelayState"))))
            elif url.path == "/idp/metadata":
                self._send(_Reply(HTTPStatus.OK, owner.metadata_xml(), "application/samlmetadata+xml"))
            else:
                self._send(_Reply(HTTPStatus.NOT_FOUND, _error_page("Not found")))

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/idp/login":
                self._send(_Reply(HTTPStatus.NOT_FOUND, _error_page("Not found")))
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(length, 1_000_000)).decode("utf-8", "replace")
            form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            status, body = owner.handle_login(form)
            self._send(_Reply(status, body))

    return Handler
