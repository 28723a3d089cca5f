"""The cloud's operator HTTP surface: see :mod:`dcrec.cloud.serving.http.app`."""
