"""Regulator bundles: RSMF, load files, transcripts, signed manifests, offline verifier."""
