"""The cloud's operator HTTP surface: see :mod:`cloud.http.app`."""
