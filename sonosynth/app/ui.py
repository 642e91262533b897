"""The page of `sonosynth app`: three Gradio tabs (Generate, Edit, Review) wired to `AppSession`.

Callbacks turn every `SonosynthError` into `gr.Error`, which the page shows as a message box; nothing
else is caught, so a bug still shows as one (in the server log), never as a half-done result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from sonosynth.app.session import (
    SORTS,
    AppSession,
    LabelStyle,
    draw_ellipse,
    mask_to_rgb,
    review_picture,
    review_rows,
    rgb_to_mask,
    set_flag,
)
from sonosynth.errors import SonosynthError
from sonosynth.synthesis.masks.anomaly import ANOMALIES

# Model-resolution pictures (32-256 px) shown large, with visible pixels rather than blur.
CSS = (".pixels img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }\n"
       "#review-grid .caption-label { white-space: normal; overflow-wrap: anywhere; max-width: none; }")
NO_SEGMENTER = "no fidelity Dice: start the app with `--segmenter SEGRUN` to score each pair against its mask"
NO_DICE = ("click a pair; this dataset has no fidelity Dice (generate it with `--segmenter SEGRUN`), so it is "
           "shown by id")


def shown_in_page(function: Callable[..., Any]) -> Callable[..., Any]:
    """Errors users can fix (a wrong file, a label the model does not know) as a message in the page."""
    @wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SonosynthError as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return call


def editor_value(mask: np.ndarray, style: LabelStyle) -> dict[str, Any]:
    """What an ImageEditor shows for a mask: the mask's colours as the background, nothing painted yet."""
    picture = mask_to_rgb(mask, style)
    return {"background": picture, "layers": [], "composite": picture}


def painted_mask(value: dict[str, Any] | None, style: LabelStyle, where: str = "mask") -> np.ndarray:
    if not value or value.get("composite") is None:
        raise SonosynthError(f"{where}: nothing drawn yet")
    return rgb_to_mask(np.asarray(value["composite"]), style)


def legend(style: LabelStyle) -> str:
    swatch = '<span style="display:inline-block;width:1em;height:1em;background:{};border:1px solid #888;' \
             'vertical-align:middle"></span> {} ({})'
    return "Brushes: " + " &nbsp; ".join(swatch.format(c, name, k)
                                         for k, (c, name) in enumerate(zip(style.hex_colours, style.names,
                                                                           strict=True)))


def caption(pair_id: str, dice: float | None, flagged: bool) -> str:
    return f"{pair_id} · " + ("no Dice" if dice is None else f"Dice {dice:.3f}") + (" · flagged" if flagged else "")


def build_app(session: AppSession, review: str | Path | None = None) -> Any:
    """The Blocks app; `review` pre-fills the Review tab's dataset folder."""
    from sonosynth.data.imageio import read_image, read_label_map, write_png

    style, size = session.style, session.size
    blank = np.zeros((size, size), np.uint8)
    brush = gr.Brush(colors=style.hex_colours, default_color=style.hex_colours[min(1, len(style.names) - 1)],
                     color_mode="fixed", default_size=max(2, size // 12))
    pair_ids = session.pair_ids() if session.dataset is not None else []
    attribute_names = list(session.attributes)
    first = pair_ids[0] if pair_ids else None

    with gr.Blocks(title="sonosynth") as app:
        gr.Markdown(f"### sonosynth · `{session.run}` · {session.model.kind} model, {size} px")
        with gr.Tab("Generate", id="generate"):
            fov = gr.State(None)
            with gr.Row():
                with gr.Column():
                    canvas = gr.ImageEditor(
                        value=editor_value(blank, style), canvas_size=(size, size), fixed_canvas=True, brush=brush,
                        eraser=gr.Eraser(default_size=max(2, size // 12)), format="png", image_mode="RGB",
                        layers=False, transforms=(), sources=(), label=f"mask ({size} x {size})", height=420,
                        elem_id="mask-canvas")
                    gr.HTML(legend(style) + "<br>The eraser removes strokes; paint background to clear a label. "
                            "`clear` keeps the dataset's field of view (its fan) for a drawing.")
                    with gr.Row():
                        pick = gr.Dropdown(pair_ids, value=first, label="mask from the dataset",
                                           interactive=bool(pair_ids))
                        load = gr.Button("load", interactive=bool(pair_ids))
                    with gr.Row():
                        deform = gr.Button("deform", elem_id="deform")
                        shape = gr.Button("new shape", interactive=bool(pair_ids))
                        clear = gr.Button("clear")
                    with gr.Row():
                        anomaly_name = gr.Dropdown(list(ANOMALIES), value=ANOMALIES[0],
                                                   label="anomaly of the lesion (label 1)")
                        make_anomaly = gr.Button("make anomaly", elem_id="make-anomaly")
                    with gr.Accordion("ellipse (fetal heads)", open=False):
                        with gr.Row():
                            e_label = gr.Dropdown([(n, k) for k, n in enumerate(style.names)], value=min(1, len(
                                style.names) - 1), label="label")
                            e_angle = gr.Slider(-90, 90, 0, step=1, label="angle (degrees)")
                        with gr.Row():
                            e_row = gr.Slider(0, size, size // 2, step=1, label="centre row")
                            e_col = gr.Slider(0, size, size // 2, step=1, label="centre column")
                        with gr.Row():
                            e_rows = gr.Slider(1, size, size // 4, step=1, label="semi-axis (rows)")
                            e_cols = gr.Slider(1, size, size // 3, step=1, label="semi-axis (columns)")
                        ellipse = gr.Button("draw ellipse")
                    attrs = [gr.Dropdown(["", *values], value="", label=name)
                             for name, values in session.attributes.items()]
                    with gr.Row():
                        steps = gr.Slider(1, 100, 25, step=1, label="steps")
                        guidance = gr.Slider(1.0, 10.0, 1.5, step=0.1, label="guidance")
                        seed = gr.Number(0, precision=0, label="seed")
                    prompt = gr.Textbox(label="prompt (empty: the run's template)", visible=session.model.prompted)
                    generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
                with gr.Column():
                    with gr.Row():
                        out_image = gr.Image(label="generated image", type="numpy", format="png",
                                             elem_id="generated-image", interactive=False, height=300,
                                             elem_classes=["pixels"])
                        out_mask = gr.Image(label="its mask", type="numpy", format="png", interactive=False, height=300,
                                             elem_classes=["pixels"])
                    dice = gr.Markdown(elem_id="fidelity")
                    files = gr.File(label="the pair as PNGs", file_count="multiple", interactive=False)

            def attribute_values(values: tuple) -> dict[str, str]:
                return dict(zip(attribute_names, values, strict=True))

            @shown_in_page
            def on_load(pair_id: str | None) -> tuple:
                if not pair_id:
                    raise SonosynthError("pick a pair of the dataset first")
                mask, field = session.dataset_mask(pair_id)
                return editor_value(mask, style), field

            @shown_in_page
            def on_deform(value: dict, seed_value: float) -> dict:
                return editor_value(session.deform(painted_mask(value, style), int(seed_value or 0)), style)

            @shown_in_page
            def on_anomaly(value: dict, name: str, seed_value: float) -> dict:
                return editor_value(session.anomaly(painted_mask(value, style), name, int(seed_value or 0)), style)

            @shown_in_page
            def on_shape(seed_value: float, *values: str) -> tuple:
                mask, field = session.new_shape(int(seed_value or 0), attribute_values(values))
                return editor_value(mask, style), field

            @shown_in_page
            def on_ellipse(value: dict, label: int, row: float, col: float, rows: float, cols: float,
                           angle: float) -> dict:
                mask = painted_mask(value, style) if value and value.get("composite") is not None else blank
                return editor_value(draw_ellipse(mask, int(label), (row, col), (rows, cols), angle), style)

            @shown_in_page
            def on_generate(value: dict, field: Any, steps_value: float, guidance_value: float, seed_value: float,
                            prompt_value: str, *values: str, progress: Any = gr.Progress(track_tqdm=True)) -> tuple:
                mask = painted_mask(value, style)
                pair = session.generate(mask, field, attribute_values(values), int(steps_value), float(guidance_value),
                                        int(seed_value or 0), prompt_value or None)
                folder = Path(tempfile.mkdtemp(prefix="sonosynth-app-"))
                write_png(folder / "image.png", pair.image)
                write_png(folder / "mask.png", pair.mask)
                note = f"fidelity Dice (segmenter vs mask): **{pair.dice:.3f}**" if pair.dice is not None else \
                    NO_SEGMENTER
                return pair.image, mask_to_rgb(pair.mask, style), note, [str(folder / "image.png"),
                                                                          str(folder / "mask.png")]

            load.click(on_load, pick, [canvas, fov])
            deform.click(on_deform, [canvas, seed], canvas)
            make_anomaly.click(on_anomaly, [canvas, anomaly_name, seed], canvas)
            shape.click(on_shape, [seed, *attrs], [canvas, fov])
            clear.click(lambda: (editor_value(blank, style), session.default_fov()), None, [canvas, fov])
            ellipse.click(on_ellipse, [canvas, e_label, e_row, e_col, e_rows, e_cols, e_angle], canvas)
            generate.click(on_generate, [canvas, fov, steps, guidance, seed, prompt, *attrs],
                           [out_image, out_mask, dice, files])

        with gr.Tab("Edit", id="edit"):
            originals = gr.State(None)  # (image, mask) at the scan's own size
            with gr.Row():
                with gr.Column():
                    with gr.Row():
                        edit_pick = gr.Dropdown(pair_ids, value=first, label="a pair of the dataset",
                                                interactive=bool(pair_ids))
                        edit_load = gr.Button("load", interactive=bool(pair_ids))
                    with gr.Row():
                        image_file = gr.File(label="or a scan (PNG)", file_types=[".png"], elem_id="edit-scan")
                        mask_file = gr.File(label="and its mask (PNG label map)", file_types=[".png"],
                                            elem_id="edit-mask")
                    upload = gr.Button("load these files")
                    edit_canvas = gr.ImageEditor(brush=brush, eraser=gr.Eraser(), format="png", image_mode="RGB",
                                                 layers=False, transforms=(), sources=(), height=420,
                                                 label="paint the mask as it should become", elem_id="edit-canvas")
                    gr.HTML(legend(style))
                    with gr.Row():
                        edit_anomaly = gr.Dropdown(list(ANOMALIES), value=ANOMALIES[0],
                                                   label="anomaly of the lesion (label 1)")
                        edit_make_anomaly = gr.Button("make anomaly", elem_id="edit-make-anomaly")
                    with gr.Row():
                        edit_steps = gr.Slider(2, 200, 50, step=1, label="steps")
                        jumps = gr.Slider(1, 10, 3, step=1, label="RePaint passes per jump")
                        edit_seed = gr.Number(0, precision=0, label="seed")
                    edit_attrs = [gr.Dropdown(["", *values], value="", label=name)
                                  for name, values in session.attributes.items()]
                    run_edit = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column():
                    edit_out = gr.Gallery(label="original | edited | changed region", columns=3, height=320,
                                          elem_id="edit-result")
                    edit_note = gr.Markdown()

            @shown_in_page
            def on_edit_load(pair_id: str | None) -> tuple:
                if not pair_id:
                    raise SonosynthError("pick a pair of the dataset first")
                image, mask = session.dataset_pair(pair_id)
                return editor_value(mask, style), (image, mask)

            @shown_in_page
            def on_upload(image_path: str | None, mask_path: str | None) -> tuple:
                if not image_path or not mask_path:
                    raise SonosynthError("give both a scan and its mask")
                image, mask = read_image(image_path), read_label_map(mask_path)
                if image.shape[:2] != mask.shape:
                    raise SonosynthError(f"{Path(mask_path).name}: mask {mask.shape[1]}x{mask.shape[0]} but scan "
                                         f"{image.shape[1]}x{image.shape[0]}; they must be the same size")
                session.check_mask(mask, Path(mask_path).name)
                return editor_value(mask, style), (image, mask)

            @shown_in_page
            def on_edit(value: dict, loaded: Any, steps_value: float, jumps_value: float, seed_value: float,
                        *values: str, progress: Any = gr.Progress(track_tqdm=True)) -> tuple:
                if loaded is None:
                    raise SonosynthError("load a scan and its mask first")
                image, mask = loaded
                edited = painted_mask(value, style, "edited mask")
                result = session.edit(image, mask, edited, int(steps_value), int(seed_value or 0), int(jumps_value),
                                      attribute_values(values))
                region = (result.region * 255).astype(np.uint8)
                note = f"{int(result.region.sum())} pixels regenerated ({result.model_evaluations} model evaluations)"
                return [(np.asarray(image), "original"), (result.image, "edited"), (region, "changed region")], note

            edit_load.click(on_edit_load, edit_pick, [edit_canvas, originals])
            edit_make_anomaly.click(on_anomaly, [edit_canvas, edit_anomaly, edit_seed], edit_canvas)
            upload.click(on_upload, [image_file, mask_file], [edit_canvas, originals])
            run_edit.click(on_edit, [edit_canvas, originals, edit_steps, jumps, edit_seed, *edit_attrs],
                           [edit_out, edit_note])

        with gr.Tab("Review", id="review"):
            shown = gr.State([])  # ids in gallery order
            chosen = gr.State(None)
            with gr.Row():
                folder = gr.Textbox(value=str(review or ""), label="generated dataset folder", scale=3)
                sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="order")
                show = gr.Button("show", elem_id="review-show")
            grid = gr.Gallery(label="pairs (mask outlines)", columns=8, height=360, allow_preview=False,
                              elem_id="review-grid")
            with gr.Row():
                large = gr.Image(label="selected pair", type="numpy", interactive=False, height=360,
                                 elem_classes=["pixels"])
                with gr.Column():
                    picked = gr.Markdown("click a pair", elem_id="review-picked")
                    flag = gr.Button("flag", elem_id="review-flag")
                    unflag = gr.Button("unflag")

            @shown_in_page
            def on_show(path: str, order: str) -> tuple:
                from sonosynth.data.format import Dataset

                if not path:
                    raise SonosynthError("give the folder of a generated dataset")
                rows = review_rows(path, order)
                dataset = Dataset.open(path)
                items = [(review_picture(dataset, pid, style), caption(pid, dice, f)) for pid, dice, f in rows]
                note = "click a pair" if any(dice is not None for _, dice, _ in rows) else NO_DICE
                return items, [pid for pid, _, _ in rows], None, None, note

            @shown_in_page
            def on_select(path: str, ids: list[str], event: gr.SelectData) -> tuple:
                from sonosynth.data.format import Dataset

                pair_id = ids[event.index]
                dice, flagged = next((d, f) for pid, d, f in review_rows(path) if pid == pair_id)
                text = f"**{caption(pair_id, dice, flagged)}**"
                return pair_id, review_picture(Dataset.open(path), pair_id, style), text

            def flagging(value: bool) -> Callable[..., Any]:
                @shown_in_page
                def on_flag(path: str, pair_id: str | None, order: str) -> tuple:
                    if not pair_id:
                        raise SonosynthError("click a pair first")
                    set_flag(path, [pair_id], value)
                    items, ids, *_ = on_show(path, order)
                    return items, ids, f"**{pair_id}** {'flagged' if value else 'unflagged'} (manifest.csv updated)"

                return on_flag

            show.click(on_show, [folder, sort], [grid, shown, chosen, large, picked])
            grid.select(on_select, [folder, shown], [chosen, large, picked])
            flag.click(flagging(True), [folder, chosen, sort], [grid, shown, picked])
            unflag.click(flagging(False), [folder, chosen, sort], [grid, shown, picked])
    return app


def serve(session: AppSession, review: str | Path | None = None, host: str = "127.0.0.1", port: int = 7860,
          block: bool = True) -> Any:
    """Start the app on `host:port` (loopback unless told otherwise); returns the Blocks when not blocking."""
    app = build_app(session, review)
    app.queue()
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=True, show_error=True,
               inbrowser=False, share=False, css=CSS)
    return app
