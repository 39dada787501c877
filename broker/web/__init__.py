"""HTTP edges: routes parse, call a use case in ``broker.federation``, render."""
