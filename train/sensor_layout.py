"""Which channels measure one bearing: ``[product] same_bearing`` when the config says, else read from the channel
names when they say it plainly (docs/detection.md, "Attribution").

A bearing housing is measured in up to three directions (horizontal, vertical, axial; x, y, z on a triaxial
sensor), and condition monitoring reads those directions as one measuring point: a fault shows in whichever
direction the load and the housing's stiffness favour, and may move from one to another as it grows. Channels
whose names differ only by a direction word (``horiz_acc_g`` / ``vert_acc_g``, ``B1_x`` / ``B1_y``, ``b1x`` /
``b1y``) are such a point. Nothing is guessed beyond that: names with no direction word, or whose other words
differ, stay bearings of their own, and ``same_bearing = []`` keeps every channel apart whatever its name."""

from __future__ import annotations

import re

from vibrawatch.agent.errors import ConfigError

# Whole words that name a direction of measurement, and nothing else, in published vibration data sets.
DIRECTIONS = frozenset({"x", "y", "z", "h", "v", "hor", "horiz", "horizontal", "ver", "vert", "vertical",
                        "ax", "axial"})


def _words(name: str) -> list[str]:
    """Lower-case words, split at anything not a letter or a digit and where letters meet digits (``b1x``: b, 1, x)."""
    return re.findall(r"[a-z]+|[0-9]+", name.lower())


def directions_by_name(channels: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Groups of two or more channels whose names are the same but for one direction word each, a different one
    per channel (e.g. ``("horiz_acc_g", "vert_acc_g")``): one measuring point's directions. () when none."""
    groups: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for name in channels:
        words = _words(name)
        dirs = [i for i, w in enumerate(words) if w in DIRECTIONS]
        if len(dirs) != 1:
            continue  # no direction word, or several: the name does not say which direction it is
        rest = tuple(words[: dirs[0]]) + ("*",) + tuple(words[dirs[0] + 1:])
        groups.setdefault(rest, []).append((words[dirs[0]], name))
    out = []
    for members in groups.values():
        if len(members) >= 2 and len({d for d, _ in members}) == len(members):
            out.append(tuple(name for _, name in members))
    return tuple(out)


def bearing_indices(same_bearing: tuple[tuple[str, ...], ...] | None, channels: tuple[str, ...]
                    ) -> tuple[int, ...] | None:
    """``[product] same_bearing`` (lists of channel names, each one bearing's directions; None: read from the
    names, ``directions_by_name``) -> each channel's bearing index (``EventRule.bearings``); a channel in no list
    is a bearing of its own. None when no channel shares a bearing."""
    if same_bearing is None:
        same_bearing = directions_by_name(channels)
    if not same_bearing:
        return None
    index: dict[str, int] = {}
    for b, names in enumerate(same_bearing):
        for name in names:
            if name not in channels:
                raise ConfigError(f"[product] same_bearing: no channel {name!r}; the channels are "
                                  f"{', '.join(channels)}")
            if name in index:
                raise ConfigError(f"[product] same_bearing: channel {name!r} is on two bearings")
            index[name] = b
    compact: dict[tuple[str, int], int] = {}  # numbered in channel order: every index below the channel count
    return tuple(compact.setdefault(("bearing", index[c]) if c in index else ("alone", i), len(compact))
                 for i, c in enumerate(channels))
