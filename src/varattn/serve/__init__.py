"""``varattn serve``: the alignment explorer, a small web application over trained runs.

* :mod:`varattn.serve.limits`: what a request may ask for (sentence length, beam, upload size, queue).
* :mod:`varattn.serve.explore`: what the pages show, as JSON, computed by the library: translations, exact
  scores, the prior / q / exact posterior alignments with entropies, K-max alternatives and links, VQA answers
  and regions. It needs no web framework.
* :mod:`varattn.serve.app`: the ASGI application (Starlette; run by uvicorn), its JSON API and the page in
  ``static/``. It needs the ``serve`` extra.

Nothing here is imported by the library; ``varattn.commands.serve`` starts it.
"""
