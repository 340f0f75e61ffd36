"""Label rules, one checker for every tool: a label becomes a folder name under the dataset and a class name in
the model, so anything that could escape the folder, hide it, or clash with what the runtime shows is refused.

`UNKNOWN_LABEL` is what a prediction says when the model is unsure or the input is unlike its training images;
no class may be called so (in any case).
"""

from __future__ import annotations

import unicodedata

from edge.core.errors import EdgeError

MAX_LABEL_LENGTH = 64
SPLITS = ("train", "val")
UNKNOWN_LABEL = "unknown"


def check_label(label: str, flag_hints: bool = True) -> str:
    """Return `label` if it is a safe class-folder name, else raise EdgeError naming the rule it breaks.

    `flag_hints=False` (the teach page) words the advice without command-line flags."""
    if not label or not label.strip():
        raise EdgeError("label is empty; give a class name, e.g. " + ("--label " if flag_hints else "") + "thumbs_up")
    if len(label) > MAX_LABEL_LENGTH:
        raise EdgeError(f"label {label[:20]!r}... is {len(label)} characters; the limit is {MAX_LABEL_LENGTH}")
    if any(unicodedata.category(c) == "Cs" for c in label):  # a folder name that is not UTF-8, or a lone surrogate
        raise EdgeError(f"label {label!r} is not valid UTF-8 text; rename it with letters, digits, '_' or '-'")
    bad = next((c for c in label if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise EdgeError(f"label {label!r} contains the control character {bad!r} (NUL, newline, tab...); "
                        "use letters, digits, '_' or '-'")
    if "/" in label or "\\" in label:
        raise EdgeError(f"label {label!r} contains a path separator ('/' or '\\'); a label is one folder name")
    if ".." in label:
        raise EdgeError(f"label {label!r} contains '..'; a label must stay inside the dataset folder")
    if label.startswith("."):
        raise EdgeError(f"label {label!r} starts with '.'; hidden folders are skipped by the trainer")
    if label != label.strip():
        raise EdgeError(f"label {label!r} starts or ends with whitespace; remove it")
    if label in SPLITS:
        raise EdgeError(f"label {label!r} is reserved for the train/val split folders; "
                        + (f"use --split {label} to write into it, with another label" if flag_hints
                           else "choose another label"))
    if label.strip().lower() == UNKNOWN_LABEL:
        raise EdgeError(f"label {label!r} uses the reserved label {UNKNOWN_LABEL!r} (what a model shows for what it "
                        "is unsure of or has never seen); use e.g. 'none' or 'background'")
    return label
