"""The training panel's plot: the loss of each step and the validation IoU, in napari's colours.

A matplotlib figure on a Qt canvas. It follows the viewer's theme (background, text,
grid) and restyles itself when the theme changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    import napari

# (loss, validation IoU) colours per napari theme type: light enough to read on a dark
# background, dark enough on a light one.
SERIES_COLOURS = {"dark": ("#f0a03c", "#5ac8ff"), "light": ("#c45f00", "#1f66b0")}
_DEFAULT_FONT_POINTS = 9.0


def _font_points(theme) -> float:
    """The theme's font size ("9pt") in points."""
    text = str(getattr(theme, "font_size", "")).strip().lower().removesuffix("pt")
    try:
        return float(text)
    except ValueError:
        return _DEFAULT_FONT_POINTS


class TrainingPlot(FigureCanvasQTAgg):
    """Training loss per step (left axis) and validation IoU (right axis, 0 to 1) against the step.

    Attributes:
        steps, losses: the training steps drawn and their loss.
        validation: (step, IoU) of each validation drawn.
        loss_axes, iou_axes: the left and right axes (they share x).
        loss_line, iou_points: the two series.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        figure = Figure(figsize=(4.0, 2.6), layout="constrained")
        super().__init__(figure)
        # Tall enough for readable axes under the legend and above the step labels.
        self.setMinimumHeight(300)
        self.loss_axes = figure.add_subplot()
        self.iou_axes = self.loss_axes.twinx()
        (self.loss_line,) = self.loss_axes.plot([], [], linewidth=1.3, label="training loss")
        (self.iou_points,) = self.iou_axes.plot([], [], "o", markersize=4.5, label="validation IoU")
        self.iou_points.set_clip_on(False)  # the validation before training sits on the y axis
        self.loss_axes.set_xlabel("step")
        self.loss_axes.set_ylabel("training loss")
        self.iou_axes.set_ylabel("validation IoU")
        self.iou_axes.set_ylim(0, 1)
        self.loss_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        # Outside the axes, above them, so that it never hides a curve.
        self.legend = figure.legend(
            handles=[self.loss_line, self.iou_points], loc="outside upper center", ncols=2, frameon=False
        )
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.validation: list[tuple[int, float]] = []
        self.reset(1)
        self.apply_theme(viewer.theme)
        emitter, callback = viewer.events.theme, self._on_theme_changed
        emitter.connect(callback)
        # napari holds the callback weakly, but the Python object can outlive the canvas
        # (a closed dock): a theme change must not then draw on a deleted widget.
        self.destroyed.connect(lambda *_: emitter.disconnect(callback))

    def reset(self, total_steps: int) -> None:
        """Clear both series for a run of ``total_steps`` steps."""
        self.steps, self.losses, self.validation = [], [], []
        self.loss_axes.set_xlim(0, max(1, total_steps))
        self._update_data()

    def add_loss(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self._update_data()

    def add_validation(self, step: int, iou: float) -> None:
        self.validation.append((step, iou))
        self._update_data()

    def _update_data(self) -> None:
        self.loss_line.set_data(self.steps, self.losses)
        self.iou_points.set_data([s for s, _ in self.validation], [iou for _, iou in self.validation])
        top = max(self.losses, default=0.0)
        self.loss_axes.set_ylim(0, top * 1.1 if top > 0 else 1)
        self.draw_idle()

    def apply_theme(self, name: str) -> None:
        """Restyle with the colours of napari theme ``name`` ("dark", "light", "system", ...)."""
        from napari.utils.theme import get_theme

        theme = get_theme(name)
        background, text, grid = theme.background.as_hex(), theme.text.as_hex(), theme.primary.as_hex()
        loss_colour, iou_colour = SERIES_COLOURS.get(theme.type, SERIES_COLOURS["dark"])
        points = _font_points(theme)
        self.figure.set_facecolor(background)
        self.loss_axes.set_facecolor(background)  # the twin on top of it stays transparent
        for axes in (self.loss_axes, self.iou_axes):
            axes.tick_params(colors=text, labelcolor=text, labelsize=points - 1)
            for spine in axes.spines.values():
                spine.set_edgecolor(text)
        self.loss_axes.grid(True, color=grid, linewidth=0.6)
        self.loss_axes.xaxis.label.set(color=text, fontsize=points)
        # Each y label in its series' colour: which axis belongs to which curve.
        self.loss_axes.yaxis.label.set(color=loss_colour, fontsize=points)
        self.iou_axes.yaxis.label.set(color=iou_colour, fontsize=points)
        # The legend draws copies of the series: colour both.
        for series, handle, colour in zip((self.loss_line, self.iou_points), self.legend.legend_handles,
                                          (loss_colour, iou_colour)):
            series.set_color(colour)
            handle.set_color(colour)
        for label in self.legend.get_texts():
            label.set(color=text, fontsize=points)
        self.draw_idle()

    def _on_theme_changed(self, event: Any) -> None:
        self.apply_theme(event.value)
