"""SCIM 2.0 provisioning (RFC 7643, RFC 7644): IdPs create, change and retire the broker's people and groups.

``directory`` is what the use cases read at decision time (no SCIM library); ``resources`` describes the
service (RFC 7643 schemas, ServiceProviderConfig); ``storage`` keeps users and groups in the broker's store;
``service`` serves the protocol for one authenticated provisioning client and carries out what a change
means for access (revocation, ended sessions and grants). scim2-server and scim2-models are used only here.
"""
