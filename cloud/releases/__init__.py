"""Releases: the device-model and cloud-model registries and the signing of releases."""
