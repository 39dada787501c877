"""One connector per identity store. Each turns a protocol exchange into one frozen
:class:`~broker.identity.Identity`; connector-private state never leaves the broker."""
