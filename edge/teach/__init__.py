"""Teach mode: collect, train and go live from a browser, on a headless device (`edge teach`, `capture --web`).

- `config`: TeachConfig (edge serve's options plus the dataset and output folders).
- `service`: TeachService: composes `edge serve`'s Service (started without a model) with the page and API below.
- `dataset`: labels and snapshots under DIR, written as `capture` writes them.
- `features`: the background worker that caches each snapshot's backbone features as it arrives.
- `jobs`: Train (a head fitted on the cached features, then swapped in live) and Export.
- `api`: the JSON API; `page.html`: the page (plain HTML and JS, no build step).

This sits above edge.service, train and export: it may import them, they never import it.
"""
