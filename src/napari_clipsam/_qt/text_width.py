"""Long text (a 2,000-character concept, a file path, a layer name) never widens a dock.

Qt sizes a combo box to its longest item and a label to its longest unbreakable run of
text, and a dock is as wide as its widest control: a concept without spaces once made
the dock 15,000 px wide. Combo boxes here take a fixed width; labels break long runs
(zero-width spaces in what is shown) and shorten very long ones in the middle, with the
whole text in their tooltip, so that they do not grow tall either. A label's ``value``
stays the text as given.
"""

from __future__ import annotations

import re
from typing import Any

from magicgui.widgets import Label

# Characters a combo box is sized for, whatever its items.
COMBO_CHARACTERS = 16
# Longest run shown without a break opportunity.
_RUN = 24
# Longest run shown whole; a longer one keeps its start and its end (a path's file name).
_LONGEST = 160
_BREAK = "\u200b"
_LONG_RUN = re.compile(rf"\S{{{_RUN + 1},}}")


def shown_text(text: str) -> str:
    """``text`` as a label shows it: runs without spaces shortened to ``_LONGEST``
    characters and broken every ``_RUN`` characters (zero-width spaces)."""

    def split(match: re.Match) -> str:
        run = match.group(0)
        if len(run) > _LONGEST:
            half = (_LONGEST - 1) // 2
            run = f"{run[:half]}\u2026{run[-half:]}"
        return _BREAK.join(run[i : i + _RUN] for i in range(0, len(run), _RUN))

    return _LONG_RUN.sub(split, text)


class WrappingLabel(Label):
    """A read-only text that wraps at spaces, and within runs too long for the dock's width.

    ``value`` is the text as given; only what Qt shows has the break opportunities.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._text = ""
        super().__init__(**kwargs)
        self.native.setWordWrap(True)
        keep_width(self.native)

    def get_value(self) -> str:
        return self._text

    def set_value(self, value: Any) -> None:
        self._text = "" if value is None else str(value)
        shown = shown_text(self._text)
        super().set_value(shown)
        self.native.setToolTip(self._text if shown.replace(_BREAK, "") != self._text else "")


def keep_width(root) -> None:
    """Make the combo boxes and wrapped labels in ``root`` (a QWidget, itself included) ignore their text's width."""
    from qtpy.QtWidgets import QComboBox, QLabel, QSizePolicy

    for widget in [root, *root.findChildren(QComboBox), *root.findChildren(QLabel)]:
        if isinstance(widget, QComboBox):
            widget.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            widget.setMinimumContentsLength(COMBO_CHARACTERS)
        elif isinstance(widget, QLabel) and widget.wordWrap():
            # Ignored: the label takes the width the layout gives and wraps in it.
            policy = widget.sizePolicy()
            policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
            widget.setSizePolicy(policy)
