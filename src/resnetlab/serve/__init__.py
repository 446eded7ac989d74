"""`resnetlab serve`: a local web app (a page and ``POST /predict``) around a ``Predictor``."""
