"""Hostile variants of a signed SAML 2.0 Response, for testing the broker's SAML consumer.

Every function takes the XML of a ``samlp:Response`` (as returned by
:meth:`tests.support.saml_idp.SamlIdp.make_response`, not base64) and returns the
XML of the hostile variant. The input is never modified. Each docstring names
the attack and says what a correct service provider must do with the result.

The XML Signature Wrapping shapes XSW1..XSW8 follow SAML Raider
(``helpers/XSWHelpers.java``), which implements the attacks from Somorovsky et
al., "On Breaking SAML: Be Whoever You Want to Be" (USENIX Security 2012). In
every XSW variant the genuinely signed content is kept somewhere in the
document (so a naive "is there a valid signature?" check passes) while an
*evil* copy whose ``NameID`` is replaced by ``evil_name_id`` sits where a naive
consumer reads the identity from.

* XSW1/XSW2 target the *Response* signature: use them on a response whose
  Response is signed (the default of ``make_response``).
* XSW3..XSW8 target the *Assertion* signature. They are meaningful against a
  response whose Response element is **not** signed -- build the input with
  ``make_response(sign_response=False)`` or :func:`assertion_signed_only`. (On a
  response that also carries a Response signature they still must be rejected,
  just for a less interesting reason: the Response digest no longer matches.)

:func:`resign` (python-xmlsec) re-signs a document after a deliberate change,
with the real IdP key (to isolate one check) or an attacker key.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import xmlsec as _xmlsec
from cryptography import x509
from cryptography.x509.oid import NameOID
from lxml import etree

from tests.support.saml_idp import (
    DIGEST_SHA1,
    DIGEST_SHA256,
    SIG_RSA_SHA1,
    SIG_RSA_SHA256,
    make_keypair,
)

__all__ = [
    "EVIL_NAME_ID",
    "NS",
    "assertion_ids",
    "assertion_signed_only",
    "billion_laughs",
    "duplicate_ids",
    "foreign_key_signature",
    "inject_comment_in_name_id",
    "name_ids",
    "oversized",
    "reference_other_element",
    "remove_assertion_signature",
    "resign",
    "sha1_signature",
    "strip_signatures",
    "tamper_name_id",
    "two_assertions",
    "xsw1",
    "xsw2",
    "xsw3",
    "xsw4",
    "xsw5",
    "xsw6",
    "xsw7",
    "xsw8",
    "xxe_doctype",
]

SAMLP_NS = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"samlp": SAMLP_NS, "saml": SAML_NS, "ds": DS_NS}

#: NameID carried by the attacker-controlled copy in the wrapping attacks.
EVIL_NAME_ID = "admin@evil"

#: python-xmlsec's bundled stubs lack Transform constants and KeyFormat; use it untyped.
xmlsec: Any = _xmlsec

_SIGN_TRANSFORMS = {SIG_RSA_SHA256: xmlsec.Transform.RSA_SHA256, SIG_RSA_SHA1: xmlsec.Transform.RSA_SHA1}
_DIGEST_TRANSFORMS = {DIGEST_SHA256: xmlsec.Transform.SHA256, DIGEST_SHA1: xmlsec.Transform.SHA1}

_ASSERTION = f"{{{SAML_NS}}}Assertion"
_ISSUER = f"{{{SAML_NS}}}Issuer"
_SIGNATURE = f"{{{DS_NS}}}Signature"


# ------------------------------------------------------------------ plumbing


def _parse(xml: str | bytes) -> etree._Element:
    """Parse without resolving entities or touching the network (inputs may be hostile)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True, remove_blank_text=False)
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    root = etree.fromstring(data, parser)
    if root.tag != f"{{{SAMLP_NS}}}Response":
        raise ValueError(f"expected a samlp:Response, got {root.tag}")
    return root


def _serialize(root: etree._Element) -> str:
    return str(etree.tostring(root, encoding="unicode"))


def _assertions(root: etree._Element) -> list[etree._Element]:
    return list(root.iterchildren(_ASSERTION))


def _first_assertion(root: etree._Element) -> etree._Element:
    found = _assertions(root)
    if not found:
        raise ValueError("the Response has no saml:Assertion child (encrypted or missing)")
    return found[0]


def _own_signature(elem: etree._Element) -> etree._Element | None:
    """The ds:Signature that is a direct child of ``elem`` (its enveloped signature)."""
    return elem.find(_SIGNATURE)


def _require_own_signature(elem: etree._Element, what: str) -> etree._Element:
    sig = _own_signature(elem)
    if sig is None:
        raise ValueError(f"{what} is not signed; this mutation needs a signed {what}")
    return sig


def _remove(elem: etree._Element | None) -> None:
    """Detach ``elem`` from its parent, keeping the parent's text layout intact."""
    if elem is None:
        return
    parent = elem.getparent()
    if parent is None:
        raise ValueError("cannot remove the document element")
    if elem.tail:
        prev = elem.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + elem.tail
        else:
            parent.text = (parent.text or "") + elem.tail
    parent.remove(elem)


def _set_name_ids(elem: etree._Element, value: str) -> None:
    """Replace the text of every saml:NameID under ``elem`` (the identity a consumer reads)."""
    found = False
    for name_id in elem.iter(f"{{{SAML_NS}}}NameID"):
        for child in list(name_id):  # drop comments etc. so the text is exactly ``value``
            name_id.remove(child)
        name_id.text = value
        found = True
    if not found:
        raise ValueError("no saml:NameID found")


def _evil_copy(elem: etree._Element, evil_name_id: str, *, new_id: str | None = None) -> etree._Element:
    """Deep copy of ``elem`` without its own signature, NameID replaced, optionally re-identified."""
    clone = copy.deepcopy(elem)
    _remove(_own_signature(clone))
    _set_name_ids(clone, evil_name_id)
    if new_id is not None:
        clone.set("ID", new_id)
    clone.tail = None
    return clone


def _insert_after_issuer(parent: etree._Element, child: etree._Element) -> None:
    issuer = parent.find(_ISSUER)
    index = parent.index(issuer) + 1 if issuer is not None else 0
    parent.insert(index, child)


def name_ids(xml: str) -> list[str]:
    """All NameID values in document order (comments inside a NameID are shown as ``<!---->``)."""
    root = _parse(xml)
    values = []
    for name_id in root.iter(f"{{{SAML_NS}}}NameID"):
        text = name_id.text or ""
        for child in name_id:
            text += (f"<!--{child.text}-->" if isinstance(child, etree._Comment) else "") + (child.tail or "")
        values.append(text)
    return values


def assertion_ids(xml: str) -> list[str]:
    """IDs of every saml:Assertion anywhere in the document, in document order."""
    return [a.get("ID", "") for a in _parse(xml).iter(_ASSERTION)]


# ------------------------------------------------------------------ signing


def _sign(elem: etree._Element, key_pem: bytes, cert_pem: bytes, signing_alg: str, digest_alg: str) -> etree._Element:
    """Insert an enveloped, exclusive-c14n ds:Signature over ``elem`` (by its ID) after its Issuer."""
    elem_id = elem.get("ID")
    if not elem_id:
        raise ValueError(f"{elem.tag} has no ID attribute to reference")
    signature = xmlsec.template.create(elem, xmlsec.Transform.EXCL_C14N, _SIGN_TRANSFORMS[signing_alg], ns="ds")
    _insert_after_issuer(elem, signature)
    reference = xmlsec.template.add_reference(signature, _DIGEST_TRANSFORMS[digest_alg], uri=f"#{elem_id}")
    xmlsec.template.add_transform(reference, xmlsec.Transform.ENVELOPED)
    xmlsec.template.add_transform(reference, xmlsec.Transform.EXCL_C14N)
    key_info = xmlsec.template.ensure_key_info(signature)
    xmlsec.template.x509_data_add_certificate(xmlsec.template.add_x509_data(key_info))

    key = xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM, None)
    key.load_cert_from_memory(cert_pem, xmlsec.KeyFormat.CERT_PEM)
    ctx = xmlsec.SignatureContext()
    ctx.key = key
    ctx.register_id(elem, "ID")
    ctx.sign(signature)
    return signature


def resign(
    xml: str,
    key_pem: bytes,
    cert_pem: bytes,
    *,
    sign_assertion: bool = True,
    sign_response: bool = False,
    signing_alg: str = SIG_RSA_SHA256,
    digest_alg: str = DIGEST_SHA256,
) -> str:
    """Drop every existing signature, then sign again with ``key_pem`` (cert embedded in KeyInfo).

    Each saml:Assertion that is a child of the Response is signed when
    ``sign_assertion``; the Response is signed (last, so it covers the assertion
    signatures) when ``sign_response``. Signatures are enveloped, use exclusive
    c14n and are placed right after the element's Issuer, like real IdPs do.
    Uses python-xmlsec (libxmlsec1 in-process).
    """
    root = _parse(xml)
    for sig in list(root.iter(_SIGNATURE)):
        _remove(sig)
    if sign_assertion:
        for assertion in _assertions(root):
            _sign(assertion, key_pem, cert_pem, signing_alg, digest_alg)
    if sign_response:
        _sign(root, key_pem, cert_pem, signing_alg, digest_alg)
    return _serialize(root)


# ------------------------------------------------------------ XSW1 .. XSW8


def xsw1(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW1 -- signed Response copied *into* its own Signature, evil Response outside.

    The original Response (minus its signature) is appended as the last child of
    the Response's ds:Signature; the outer Response gets ID ``_evil_response_ID``
    and the evil NameID. The signature's Reference still resolves (by ID) to the
    hidden copy, so it verifies, while a consumer that reads the document element
    gets the attacker's identity. Must be rejected: the signature does not cover
    the Response being processed.
    """
    root = _parse(xml)
    signature = _require_own_signature(root, "Response")
    original = copy.deepcopy(root)
    _remove(_own_signature(original))
    _set_name_ids(root, evil_name_id)
    root.set("ID", "_evil_response_ID")
    signature.append(original)
    return _serialize(root)


def xsw2(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW2 -- like XSW1, but the signed Response copy is placed *before* the Signature.

    The original Response (minus its signature) becomes a sibling preceding the
    ds:Signature inside the evil Response (detached-signature shape). Must be
    rejected.
    """
    root = _parse(xml)
    signature = _require_own_signature(root, "Response")
    original = copy.deepcopy(root)
    _remove(_own_signature(original))
    _set_name_ids(root, evil_name_id)
    root.set("ID", "_evil_response_ID")
    signature.addprevious(original)
    return _serialize(root)


def xsw3(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW3 -- unsigned evil Assertion inserted *before* the signed Assertion.

    The evil copy (ID ``_evil_assertion_ID``, no signature) becomes the first
    assertion; the signed original stays after it and still verifies. Must be
    rejected: a consumer that takes "the first assertion" would read an unsigned one.
    """
    root = _parse(xml)
    assertion = _first_assertion(root)
    _require_own_signature(assertion, "Assertion")
    assertion.addprevious(_evil_copy(assertion, evil_name_id, new_id="_evil_assertion_ID"))
    return _serialize(root)


def xsw4(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW4 -- the signed Assertion is moved *inside* an unsigned evil Assertion.

    The evil copy (ID ``_evil_assertion_ID``) replaces the original as a child of
    the Response and the signed original becomes its last child. Must be rejected.
    """
    root = _parse(xml)
    assertion = _first_assertion(root)
    _require_own_signature(assertion, "Assertion")
    evil = _evil_copy(assertion, evil_name_id, new_id="_evil_assertion_ID")
    assertion.addnext(evil)
    root.remove(assertion)
    assertion.tail = None
    evil.append(assertion)
    return _serialize(root)


def xsw5(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW5 -- evil Assertion keeps the original Signature; the signed content is appended.

    The first assertion is modified in place (evil NameID, ID ``_evil_assertion_ID``)
    but keeps its ds:Signature, whose Reference still points at the original ID; an
    unsigned copy of the original (original ID) is appended to the Response, so the
    Reference resolves and verifies. Must be rejected: the signature sitting in the
    assertion does not reference that assertion.
    """
    root = _parse(xml)
    evil = _first_assertion(root)
    _require_own_signature(evil, "Assertion")
    original = copy.deepcopy(evil)
    _remove(_own_signature(original))
    original.tail = None
    root.append(original)
    _set_name_ids(evil, evil_name_id)
    evil.set("ID", "_evil_assertion_ID")
    return _serialize(root)


def xsw6(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW6 -- like XSW5, but the unsigned original is hidden *inside* the Signature.

    The copy of the original assertion (original ID, no signature) is appended to
    the evil assertion's ds:Signature element. Must be rejected.
    """
    root = _parse(xml)
    evil = _first_assertion(root)
    signature = _require_own_signature(evil, "Assertion")
    original = copy.deepcopy(evil)
    _remove(_own_signature(original))
    original.tail = None
    _set_name_ids(evil, evil_name_id)
    evil.set("ID", "_evil_assertion_ID")
    signature.append(original)
    return _serialize(root)


def xsw7(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW7 -- unsigned evil Assertion inside a ``samlp:Extensions`` element before the real one.

    ``samlp:Extensions`` may carry arbitrary content, so schema validation does not
    object; the evil copy keeps the original ID (duplicate ID) but has no signature.
    The signed original is untouched. Must be rejected (duplicate ID / assertion in
    an unexpected place); a consumer that searches ``//saml:Assertion`` finds the
    evil one first.
    """
    root = _parse(xml)
    assertion = _first_assertion(root)
    _require_own_signature(assertion, "Assertion")
    extensions = etree.Element(f"{{{SAMLP_NS}}}Extensions")
    extensions.append(_evil_copy(assertion, evil_name_id))
    assertion.addprevious(extensions)
    return _serialize(root)


def xsw8(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """XSW8 -- evil Assertion keeps the Signature; the original sits in a ``ds:Object`` inside it.

    The first assertion is modified in place (evil NameID, original ID kept, signature
    kept) and an unsigned copy of the original is placed in a ``ds:Object`` appended
    to that ds:Signature. Both carry the same ID. Must be rejected.
    """
    root = _parse(xml)
    evil = _first_assertion(root)
    signature = _require_own_signature(evil, "Assertion")
    original = copy.deepcopy(evil)
    _remove(_own_signature(original))
    original.tail = None
    _set_name_ids(evil, evil_name_id)
    ds_object = etree.SubElement(signature, f"{{{DS_NS}}}Object")
    ds_object.append(original)
    return _serialize(root)


# ------------------------------------------------------- signature removal


def strip_signatures(xml: str) -> str:
    """Signature stripping: remove every ds:Signature.

    Models an attacker who edits the response and deletes the signatures, hoping the
    SP treats signatures as optional. Must be rejected.
    """
    root = _parse(xml)
    for sig in list(root.iter(_SIGNATURE)):
        _remove(sig)
    return _serialize(root)


def assertion_signed_only(xml: str) -> str:
    """Remove only the Response signature, leaving the Assertion signature intact.

    NOT an attack by itself: the assertion signature still verifies, and this is the
    shape most IdPs send. It is **valid** for an SP that requires signed assertions
    (and not signed Responses). Useful as the base for XSW3..XSW8.
    """
    root = _parse(xml)
    _remove(_own_signature(root))
    return _serialize(root)


def remove_assertion_signature(xml: str, key_pem: bytes, cert_pem: bytes) -> str:
    """Signed Response whose Assertion is unsigned.

    The assertion signature is removed and the Response re-signed with ``key_pem``
    (pass the real IdP key), so the Response signature is valid and covers the
    assertion. Must be rejected by an SP that requires signed assertions
    (``wantAssertionsSigned``); accepted by one that only requires a signed Response.
    """
    return resign(xml, key_pem, cert_pem, sign_assertion=False, sign_response=True)


def tamper_name_id(xml: str, new_name_id: str = EVIL_NAME_ID) -> str:
    """Change the NameID without re-signing: every digest over it no longer matches. Must be rejected."""
    root = _parse(xml)
    _set_name_ids(root, new_name_id)
    return _serialize(root)


# ------------------------------------------------------ reference tricks


def reference_other_element(xml: str, key_pem: bytes, cert_pem: bytes, evil_name_id: str = EVIL_NAME_ID) -> str:
    """The Assertion's signature is valid but its Reference URI points at *another* element.

    The response is rebuilt with: a decoy assertion (original content, ID
    ``_decoy_assertion_ID``) inside ``samlp:Extensions``, signed with ``key_pem``
    (the real IdP key: it stands for any IdP-signed element the attacker got hold
    of); that ds:Signature is then moved into the main assertion, whose NameID is
    replaced by ``evil_name_id``. The signature still verifies cryptographically
    (Reference ``#_decoy_assertion_ID``) but covers nothing of the assertion it sits
    in. Any Response signature is dropped. Must be rejected: a signature must
    reference the element that contains it.
    """
    root = _parse(xml)
    for sig in list(root.iter(_SIGNATURE)):
        _remove(sig)
    assertion = _first_assertion(root)
    decoy = copy.deepcopy(assertion)
    decoy.set("ID", "_decoy_assertion_ID")
    decoy.tail = None
    extensions = etree.Element(f"{{{SAMLP_NS}}}Extensions")
    extensions.append(decoy)
    _insert_after_issuer(root, extensions)
    signature = _sign(decoy, key_pem, cert_pem, SIG_RSA_SHA256, DIGEST_SHA256)
    decoy.remove(signature)
    signature.tail = None
    _set_name_ids(assertion, evil_name_id)
    _insert_after_issuer(assertion, signature)
    return _serialize(root)


def duplicate_ids(xml: str, evil_name_id: str = EVIL_NAME_ID) -> str:
    """Two Assertions with the same ID: an unsigned evil one first, the signed original second.

    ID-based reference resolution becomes ambiguous: a verifier may check the
    signature against one element while the application reads the other. Must be
    rejected (IDs must be unique).
    """
    root = _parse(xml)
    assertion = _first_assertion(root)
    _require_own_signature(assertion, "Assertion")
    assertion.addprevious(_evil_copy(assertion, evil_name_id))
    return _serialize(root)


# ------------------------------------------------------------ key / algorithm


def foreign_key_signature(
    xml: str,
    attacker_key_pem: bytes | None = None,
    attacker_cert_pem: bytes | None = None,
    *,
    evil_name_id: str = EVIL_NAME_ID,
    sign_response: bool = True,
) -> str:
    """Evil NameID, re-signed with an attacker key whose certificate is embedded in KeyInfo.

    Models an SP that trusts whatever certificate arrives in ``ds:KeyInfo`` instead of
    the one pinned from the IdP metadata. When no attacker key is given, one is
    generated whose certificate copies the real one's subject CN (a look-alike).
    Signatures are cryptographically valid -- but with the wrong key. Must be rejected.
    """
    if attacker_key_pem is None or attacker_cert_pem is None:
        attacker_key_pem, attacker_cert_pem = make_keypair(_embedded_cert_cn(xml) or "test-idp")
    root = _parse(xml)
    _set_name_ids(root, evil_name_id)
    return resign(
        _serialize(root), attacker_key_pem, attacker_cert_pem, sign_assertion=True, sign_response=sign_response
    )


def _embedded_cert_cn(xml: str) -> str | None:
    root = _parse(xml)
    cert_elem = root.find(f".//{{{DS_NS}}}X509Certificate")
    if cert_elem is None or not cert_elem.text:
        return None
    der = base64.b64decode("".join(cert_elem.text.split()))
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def sha1_signature(xml: str, key_pem: bytes, cert_pem: bytes, *, sign_response: bool = True) -> str:
    """Re-sign with rsa-sha1 / sha1 using ``key_pem`` (pass the real IdP key); content unchanged.

    Models an IdP (or a downgrade) using a deprecated algorithm: the signature is
    valid and made with the right key, so only an algorithm policy rejects it. Must
    be rejected by an SP that refuses SHA-1. (Alternatively build it with
    ``SamlIdp.make_response(signing_alg=SIG_RSA_SHA1, digest_alg=DIGEST_SHA1)``.)
    """
    return resign(
        xml,
        key_pem,
        cert_pem,
        sign_assertion=True,
        sign_response=sign_response,
        signing_alg=SIG_RSA_SHA1,
        digest_alg=DIGEST_SHA1,
    )


# ------------------------------------------------------------- content tricks


def inject_comment_in_name_id(
    xml: str,
    visible_prefix: str,
    key_pem: bytes | None = None,
    cert_pem: bytes | None = None,
    *,
    sign_response: bool = True,
) -> str:
    """Comment injection in NameID (CVE-2017-11427 family): ``user@corp.example<!---->.evil.com``.

    Build the input for a NameID the attacker legitimately owns, e.g.
    ``user@corp.example.evil.com``, and pass ``visible_prefix="user@corp.example"``;
    an empty comment is inserted after the prefix. Exclusive c14n drops comments, so
    the digest is unchanged and the original signatures stay valid (no key needed --
    that is the attack). If ``key_pem``/``cert_pem`` are given the document is
    re-signed anyway (assertion, and Response when ``sign_response``). A consumer
    that reads only the first text node sees ``user@corp.example``; a correct one
    sees the full ``user@corp.example.evil.com``.
    """
    root = _parse(xml)
    targets = list(root.iter(f"{{{SAML_NS}}}NameID"))
    if not targets:
        raise ValueError("no saml:NameID found")
    for name_id in targets:
        text = name_id.text or ""
        if not text.startswith(visible_prefix) or text == visible_prefix:
            raise ValueError(f"NameID {text!r} does not extend {visible_prefix!r}")
        comment = etree.Comment("")
        comment.tail = text[len(visible_prefix) :]
        name_id.text = visible_prefix
        name_id.insert(0, comment)
    if key_pem is not None and cert_pem is not None:
        # resign() re-parses and keeps the comment; the new signatures exclude it just the same.
        return resign(_serialize(root), key_pem, cert_pem, sign_assertion=True, sign_response=sign_response)
    return _serialize(root)


_ENTITY_PLACEHOLDER = "__SAML_MUTATION_ENTITY_REF__"


def _with_doctype(xml: str, doctype: str, entity_ref: str) -> str:
    """Prefix a DOCTYPE and make the (first) NameID's text reference ``entity_ref``."""
    root = _parse(xml)
    name_id = root.find(f".//{{{SAML_NS}}}NameID")
    if name_id is None:
        raise ValueError("no saml:NameID found")
    name_id.text = _ENTITY_PLACEHOLDER
    body = _serialize(root).replace(_ENTITY_PLACEHOLDER, f"&{entity_ref};", 1)
    return f"{doctype}\n{body}"


def xxe_doctype(xml: str, system_uri: str = "file:///etc/passwd") -> str:
    """XXE: ``<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>`` with ``&e;`` in the NameID.

    Models external-entity injection: a parser that resolves entities would put the
    file's contents in the NameID (or fetch a URL). SAML has no use for a DTD; the
    SP must refuse any document with a DOCTYPE before signature processing.
    """
    return _with_doctype(xml, f'<!DOCTYPE x [<!ENTITY e SYSTEM "{system_uri}">]>', "e")


def billion_laughs(xml: str, levels: int = 10, fanout: int = 10) -> str:
    """Billion laughs: nested internal entities expanding to ``fanout ** levels`` copies.

    With the defaults ``&lol9;`` expands to 10**9 "lol"s (~3 GB) -- a memory/CPU
    denial of service for a parser that expands entities. Must be rejected (no DTDs).
    """
    if levels < 2:
        raise ValueError("levels must be >= 2")
    lines = ['<!ENTITY lol0 "lol">']
    for level in range(1, levels):
        lines.append(f'<!ENTITY lol{level} "{f"&lol{level - 1};" * fanout}">')
    doctype = "<!DOCTYPE lolz [\n" + "\n".join(lines) + "\n]>"
    return _with_doctype(xml, doctype, f"lol{levels - 1}")


def two_assertions(
    xml: str, key_pem: bytes, cert_pem: bytes, *, second_name_id: str = EVIL_NAME_ID, sign_response: bool = True
) -> str:
    """A Response carrying two Assertions, each validly signed by ``key_pem`` (the real IdP key).

    The second assertion is a copy of the first with a new ID and ``second_name_id``.
    Every signature verifies; only the rule "exactly one assertion" rejects it.
    Models ambiguity about *which* assertion the SP acts on (e.g. signature checked
    on one, identity read from the other). Must be rejected.
    """
    root = _parse(xml)
    assertion = _first_assertion(root)
    second = copy.deepcopy(assertion)
    second.set("ID", assertion.get("ID", "") + "-second")
    _set_name_ids(second, second_name_id)
    second.tail = None
    assertion.addnext(second)
    return resign(_serialize(root), key_pem, cert_pem, sign_assertion=True, sign_response=sign_response)


def oversized(xml: str, size_bytes: int = 1_100_000) -> str:
    """Pad the Response past ``size_bytes`` (default > 1 MB) with an XML comment.

    Comments are excluded by exclusive c14n, so all signatures remain valid: the only
    thing wrong is the size. Models resource exhaustion via huge POST bodies; the SP
    must refuse it by size before parsing/verifying.
    """
    root = _parse(xml)
    current = len(_serialize(root).encode("utf-8"))
    padding = max(size_bytes - current, 0) + 1
    comment = etree.Comment(" " + "A" * padding + " ")
    root.append(comment)
    return _serialize(root)
