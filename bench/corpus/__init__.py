"""The labelled routing corpus: requests written by hand per task family, with the tier each one needs.

``build.py`` assembles ``corpus.jsonl`` from the family modules (``local.py``, ``standard.py``,
``frontier.py``, ``sessions.py``) and the pasted material (``code.py``, ``prose.py``); see README.md.
"""
