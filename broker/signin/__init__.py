"""Browser sign-in with every identity store, as one use case (:class:`broker.signin.use_case.SignIn`).

Each flow reads top to bottom the same way: authenticate through the store's connector (a
:mod:`broker.connectors.base` protocol, which returns one verified ``Identity``), refuse a sign-in weaker
than what it was started for, start a session (checking provisioning and the disabled flag, ending the
browser's previous session) whose creation is the sign-in's audit event, then carry out a pending step-up.
Every refusal is audited with its reason before it is raised (docs/security.md).

* :mod:`.use_case` -- ``SignIn``: password (break-glass, LDAP), OIDC redirect/callback, step-up, sign-out;
* :mod:`.saml` -- SAML POST-binding sign-in and single logout, the part that needs the replay guard;
* :mod:`.sessions` -- start, find and end browser sessions;
* :mod:`.step_up` -- the typed pending step-up.
"""
