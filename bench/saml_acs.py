"""SAML ACS benchmark: the same freshly signed responses validated by the broker's connector and by pysaml2.

A pysaml2 IdP signs ``--count`` responses (assertion and response signed, RSA-SHA256). Each is then validated
twice, in the same process, one after another, on one thread:

* broker: ``SamlConnector.check`` (size/base64/DOCTYPE pre-checks, lxml parse, the broker's strict protocol
  checks, python3-saml signature and schema checks): everything the ACS does except the database round trip
  (login-request lookup, assertion-ID replay guard, session and audit rows);
* pysaml2: ``Saml2Client.parse_authn_request_response`` as a service provider, with the request ids marked as
  outstanding (signature via its default xmlsec1 backend, conditions, audience, subject confirmation).

    .venv/bin/python bench/saml_acs.py --count 200

Prints responses per second and the ratio broker/pysaml2. It only prints: it is not a pass/fail test.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from saml2 import BINDING_HTTP_POST  # noqa: E402
from saml2.client import Saml2Client  # noqa: E402
from saml2.config import SPConfig  # noqa: E402

from broker.connectors.saml import SamlConnector  # noqa: E402
from broker.settings import SamlStoreConfig  # noqa: E402
from tests.support.saml_idp import AC_MFA, XMLSEC1, SamlIdp  # noqa: E402

PUBLIC = "https://broker.bench"
SP_ENTITY = f"{PUBLIC}/saml/corp/metadata"
ACS = f"{PUBLIC}/saml/corp/acs"


def pysaml2_sp(idp: SamlIdp, workdir: Path) -> Saml2Client:
    metadata = workdir / "idp.xml"
    metadata.write_text(idp.metadata_xml())
    config = SPConfig().load(
        {
            "entityid": SP_ENTITY,
            "xmlsec_binary": XMLSEC1,
            "metadata": {"local": [str(metadata)]},
            "service": {
                "sp": {
                    "endpoints": {"assertion_consumer_service": [(ACS, BINDING_HTTP_POST)]},
                    "want_assertions_signed": True,
                    "want_response_signed": False,
                    "allow_unsolicited": False,
                }
            },
            "accepted_time_diff": 60,
        }
    )
    return Saml2Client(config)


def timed(name: str, items: list[str], check: object) -> tuple[str, float, list[float]]:
    latencies = []
    started = time.perf_counter()
    for index, item in enumerate(items):
        t = time.perf_counter()
        check(index, item)  # type: ignore[operator]
        latencies.append(time.perf_counter() - t)
    return name, len(items) / (time.perf_counter() - started), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    idp = SamlIdp(SP_ENTITY, ACS)
    ids = [f"id-bench-{i:06d}" for i in range(args.count)]
    print(f"signing {args.count} responses with the pysaml2 IdP ...", flush=True)
    responses = [
        base64.b64encode(
            idp.make_response(
                name_id=f"user{i}@corp.example",
                attributes={"email": [f"user{i}@corp.example"], "groups": ["engineering"]},
                authn_context_class_ref=AC_MFA,
                in_response_to=ids[i],
            ).encode()
        ).decode()
        for i in range(args.count)
    ]
    connector = SamlConnector(
        SamlStoreConfig(
            type="saml",
            name="corp",
            idp_entity_id=idp.entity_id,
            sso_url=idp.sso_url,
            certificates=[idp.cert_pem.decode()],
        ),
        public_url=PUBLIC,
    )
    with tempfile.TemporaryDirectory(prefix="saml-bench-") as tmp:
        sp = pysaml2_sp(idp, Path(tmp))
        outstanding = dict.fromkeys(ids, "/")

        def broker_check(index: int, item: str) -> None:
            checked = connector.check(item, now=datetime.now(UTC))
            assert checked is not None

        def pysaml2_check(index: int, item: str) -> None:
            parsed = sp.parse_authn_request_response(item, BINDING_HTTP_POST, outstanding=outstanding)
            assert parsed is not None and parsed.name_id is not None

        broker_check(0, responses[0])  # warm-up (imports, xmlsec init) outside the measurement
        pysaml2_check(0, responses[0])
        results = [
            timed("pysaml2 SP", responses, pysaml2_check),
            timed("broker SamlConnector", responses, broker_check),
        ]
    print(f"\n{args.count} responses, one thread each, same responses for both\n")
    print(f"{'validator':<24} {'resp/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rate, latencies in results:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        print(f"{name:<24} {rate:>8.1f} {q[49] * 1000:>8.2f} {q[98] * 1000:>8.2f}")
    print(f"\nratio broker/pysaml2 throughput: {results[1][1] / results[0][1]:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
