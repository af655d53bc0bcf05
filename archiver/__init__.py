"""The write path: webhook receiver, durable inbox, normaliser, sealer, hash chain + Merkle,
signing, envelope encryption, object store and SQL schema.

Lowest layer: imports nothing from `policies`, `audit`, `exporters` or `strongroom`, and reads
no global settings; everything it needs arrives as constructor arguments.
"""
