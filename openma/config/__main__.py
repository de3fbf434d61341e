"""``python -m openma.config FILE...``: regenerate the settings tables of each file (see :func:`render_docs`)."""

import sys

from openma.config import render_docs

for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as file:
        old = file.read()
    with open(path, "w", encoding="utf-8") as file:
        file.write(render_docs(old))
