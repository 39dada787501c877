"""The credential helper that runs on an engineer's machine (`broker login`, `broker credential-process`, ...).

Light imports only: no server framework, no ORM. The cache-hit path of ``credential-process`` (``process.py``)
imports nothing beyond the standard library and one AES-GCM primitive, because the AWS CLI runs it on every
call.
"""
