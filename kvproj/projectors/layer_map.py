"""Which source layer feeds each target layer: terminal, proportional, or an explicit list."""

from __future__ import annotations

LAYER_MAP_KINDS = ("proportional", "terminal")


def resolve_layer_map(layer_map: str | list[int], source_layers: int, target_layers: int) -> list[int]:
    """One source layer index per target layer.

    - "proportional": target layer t <- source layer round(t * (S-1) / (T-1)) (depth fractions line up; the
      right default when the source is shallower, e.g. small -> large).
    - "terminal": last layers aligned, target t <- source t - (T - S), clamped at 0 (Cache-to-Cache's map; it
      sends many target layers to source layer 0 when the source is shallower).
    - a list of T ints: explicit.
    """
    if isinstance(layer_map, str):
        if layer_map == "proportional":
            if target_layers == 1:
                return [source_layers - 1]
            return [round(t * (source_layers - 1) / (target_layers - 1)) for t in range(target_layers)]
        if layer_map == "terminal":
            return [max(0, t - (target_layers - source_layers)) for t in range(target_layers)]
        raise ValueError(
            f"model.projector.layer_map: got {layer_map!r}; valid: {', '.join(repr(k) for k in LAYER_MAP_KINDS)} "
            f"or a list of {target_layers} source layer indices (one per target layer)"
        )
    mapping = list(layer_map)
    if len(mapping) != target_layers:
        raise ValueError(
            f"model.projector.layer_map: the list has {len(mapping)} entries but the target has {target_layers} layers; "
            f"give one source layer (0-{source_layers - 1}) per target layer"
        )
    for t, s in enumerate(mapping):
        if not isinstance(s, int) or isinstance(s, bool):
            raise ValueError(
                f"model.projector.layer_map: target layer {t} maps to {s!r}, which is not a layer index"
            )
        if not 0 <= s < source_layers:
            raise ValueError(
                f"model.projector.layer_map: target layer {t} maps to source layer {s}, but the source has "
                f"{source_layers} layers (0-{source_layers - 1})"
            )
    return mapping


def source_windows(
    layer_map: list[int], source_layers: int, window: int, extra: list[int] | tuple[int, ...] = ()
) -> list[list[int]]:
    """Per target layer, the 2 * window + 1 consecutive source layers around its mapped one (shifted, not
    clipped, at the ends: every target layer reads as many source layers), then the `extra` source layers."""
    if bad := [s for s in extra if not 0 <= s < source_layers]:
        raise ValueError(
            f"model.projector.extra_source_layers: {bad} not in the source's {source_layers} layers; valid: "
            f"0-{source_layers - 1}"
        )
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(
            f"model.projector.source_window: got {window!r}; valid: an int >= 0 (0: one source layer)"
        )
    size = 2 * window + 1
    if size > source_layers:
        raise ValueError(
            f"model.projector.source_window: {window} reads {size} source layers per target layer, but the source "
            f"has {source_layers}; valid: 0-{(source_layers - 1) // 2}"
        )
    out = []
    for s in layer_map:
        start = min(max(s - window, 0), source_layers - size)
        out.append(list(range(start, start + size)) + list(extra))
    return out
