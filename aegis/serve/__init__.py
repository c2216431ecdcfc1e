"""The serving gateway: the verified production model behind authenticated, limited HTTP.

``aegis serve`` (:mod:`aegis.serve.runner`) starts uvicorn on the FastAPI app of
:mod:`aegis.serve.app`, a thin layer over :class:`aegis.serve.gateway.Gateway`, which
decides everything: who may call (:mod:`clients`), how much (:mod:`limiter`), which
model answers (:mod:`served`, loaded only through the registry's verified load), what it
logs (:mod:`predlog`), what it signs with its ``serving`` key (:mod:`records`) and what it
counts (:mod:`metrics`).
"""
