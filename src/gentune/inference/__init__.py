"""Inference: any model spec or run loaded with its template (`load`), batched and streamed
generation (`generate`), predictions and metrics with intervals (`evaluate`), the HTML report
(`report`), the merged export (`export`) and the interactive chat (`chat`).

Imports: the core, `data` and `models`. Training imports it (validation generates), never the
other way round."""
