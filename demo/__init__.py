"""The end-to-end demo (``python -m demo.run``, or ./demo.sh): it plays both the data owner and
the researcher, so it lives outside both packages."""
