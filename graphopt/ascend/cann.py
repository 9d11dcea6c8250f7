"""Which formats a CANN version's ATC reads: ``--precision_mode`` or ``--precision_mode_v2``, ``op_precision.ini``
with or without sections, shape ranges in ``--input_shape``.

A recipe names its CANN version as ``atc.cann: "8.0"`` (``major.minor``, optionally a release suffix such as
``8.0.RC2`` or ``7.0.0``; only major and minor decide a format). The default, ``DEFAULT_CANN``, is a current one.

- ``--precision_mode_v2`` from 7.0 (the CANN 7.0.0 ATC options, hiascend.com atlasatc_16_0098; not in 6.3.RC2's):
  values ``fp16``, ``origin``, ``cube_fp16in_fp32out``, ``mixed_float16``, ``mixed_bfloat16``; ``mixed_hif8`` and
  ``cube_hif8`` from 9.0 (``hicann/ge`` ``docs/zh/user_guides/atc_tools/CLI_options/--precision_mode_v2.md``,
  ``api/atc/cmd_flag_info.cc``). ATC refuses both flags at once (E10056). A ``--precision_mode`` with a v2
  equivalent (``PRECISION_MODE_V2``) is written as the v2 flag on such versions; the others stay v1.
- ``op_precision.ini`` sections ``[ByOpType]`` / ``[ByNodeName]`` (a node's entry wins over its type's) from 6.0;
  older versions read bare ``OpType=mode`` lines and no node names.
- Ranges in ``--input_shape`` (``input:1~8,3,224,224``) from 6.3 (CANN 6.3.RC2's ``--input_shape`` page,
  atctool_000052).
"""
from __future__ import annotations

import re

from ..core.errors import UserError

__all__ = ["DEFAULT_CANN", "PRECISION_MODES", "PRECISION_MODES_V2", "PRECISION_MODE_V2", "cann_version",
           "has_precision_mode_v2", "has_op_precision_sections", "has_shape_ranges", "precision_flag"]

DEFAULT_CANN = "8.0"
PRECISION_MODES = ("force_fp16", "allow_fp32_to_fp16", "allow_mix_precision", "must_keep_origin_dtype",
                   "force_fp32", "allow_mix_precision_fp16", "allow_mix_precision_bf16", "cube_fp16in_fp32out",
                   "allow_fp32_to_bf16")
PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "mixed_hif8",
                      "cube_hif8")
# --precision_mode -> the --precision_mode_v2 value that means the same (GE's option docs rank and describe both)
PRECISION_MODE_V2 = {"force_fp16": "fp16", "must_keep_origin_dtype": "origin",
                     "cube_fp16in_fp32out": "cube_fp16in_fp32out", "allow_mix_precision": "mixed_float16",
                     "allow_mix_precision_fp16": "mixed_float16", "allow_mix_precision_bf16": "mixed_bfloat16"}
MIXLIST_MODES = ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16")
MIXLIST_MODES_V2 = ("mixed_float16", "mixed_bfloat16")
_V2_FROM, _SECTIONS_FROM, _RANGES_FROM, _HIF8_FROM = (7, 0), (6, 0), (6, 3), (9, 0)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.[0-9A-Za-z]+)*")


def cann_version(text: str, where: str = "atc.cann") -> tuple[int, int]:
    """(major, minor) of a CANN version string; anything else is a ``UserError`` naming ``where``."""
    m = _VERSION.fullmatch(str(text).strip())
    if not m:
        raise UserError(f"{where}: {text!r} is not a CANN version (expected e.g. \"8.0\", \"8.0.RC2\", \"7.0.0\")")
    return int(m.group(1)), int(m.group(2))


def has_precision_mode_v2(cann: str) -> bool:
    return cann_version(cann) >= _V2_FROM


def has_op_precision_sections(cann: str) -> bool:
    return cann_version(cann) >= _SECTIONS_FROM


def has_shape_ranges(cann: str) -> bool:
    return cann_version(cann) >= _RANGES_FROM


def precision_flag(cann: str, mode: str | None, mode_v2: str | None, needed: str | None,
                   mixlist: bool) -> tuple[str, str] | None:
    """``(flag, value)`` of the precision flag an ATC job passes, None for none (ATC's default).

    ``mode`` / ``mode_v2``: the recipe's ``atc.precision_mode`` / ``atc.precision_mode_v2`` (at most one);
    ``needed``: the ``--precision_mode`` a pass asked for; ``mixlist``: an ``ops_info.json`` is passed, which ATC
    honours only with a mixed mode."""
    if mode_v2 is not None:
        if not has_precision_mode_v2(cann):
            raise UserError(f"atc.precision_mode_v2: CANN {cann} has no --precision_mode_v2 (from 7.0); "
                            "use atc.precision_mode or set atc.cann")
        if mode_v2 in ("mixed_hif8", "cube_hif8") and cann_version(cann) < _HIF8_FROM:
            raise UserError(f"atc.precision_mode_v2: {mode_v2} needs CANN 9.0 or later (atc.cann is {cann})")
        wanted = PRECISION_MODE_V2.get(needed or "")
        if needed and wanted != mode_v2 and not (needed in MIXLIST_MODES and mode_v2 in MIXLIST_MODES_V2):
            raise UserError(f"atc.precision_mode_v2 is {mode_v2!r} but a pass needs --precision_mode={needed}"
                            + (f" (--precision_mode_v2={wanted})" if wanted else ""))
        if mixlist and mode_v2 not in MIXLIST_MODES_V2:
            raise UserError(f"atc.precision_mode_v2 {mode_v2!r}: ATC only honours --modify_mixlist with "
                            f"{' or '.join(MIXLIST_MODES_V2)}; change the precision mode or drop the mixlist pass")
        return "precision_mode_v2", mode_v2
    if mode and needed and mode != needed:
        raise UserError(f"atc.precision_mode is {mode!r} but a pass needs {needed!r}")
    chosen = needed or mode
    if mixlist:
        if chosen is None:
            chosen = "allow_mix_precision"
        elif chosen not in MIXLIST_MODES:
            raise UserError(f"atc.precision_mode {chosen!r}: ATC only honours --modify_mixlist with "
                            "allow_mix_precision; change the precision mode or drop the mixlist pass")
    if chosen is None:
        return None
    if has_precision_mode_v2(cann) and chosen in PRECISION_MODE_V2:
        return "precision_mode_v2", PRECISION_MODE_V2[chosen]
    return "precision_mode", chosen
