"""The ``--soc_version`` names ATC knows, and the check of a recipe's ``atc.soc_version`` against them.

Source: ``hicann/runtime`` @ 681ef7610df13c8128982901142a2c869ddbb53e, one platform description per SoC in
``src/platform/platform_config/{cann,cann-dev,kirin,kirin-dev}/<soc_version>.ini`` (the names ATC's
``--soc_version`` takes, per ``hicann/ge`` @ ffdcbc9f7496c17a98c1d12762c61ed608ef3503
``docs/zh/user_guides/atc_tools/CLI_options/--soc_version.md``: ``npu-smi info`` gives Name ``310P3`` ->
``Ascend310P3``; A3 and 950 chips: Chip Name + "_" + NPU Name, e.g. ``Ascend910_9391``); ``Ascend310`` from CANN
6.0.RC1's ATC options page (hiascend.com, atctool_0064). ``RETIRED``: SoCs whose descriptions that repository
deleted in January-February 2026 (older CANN releases still carry them).

A SoC newer than this list is passed with ``atc.soc_version_unlisted: true`` in the recipe.
"""
from __future__ import annotations

from ..core.errors import UserError, closest

__all__ = ["SOC_VERSIONS", "RETIRED", "check_soc_version"]

SOC_VERSIONS: tuple[str, ...] = (
    # Ascend310P (Atlas inference series, 300I Pro/Duo etc.)
    "Ascend310P1", "Ascend310P3", "Ascend310P5", "Ascend310P7",
    # Ascend310B (Atlas 200I/500 A2)
    "Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4",
    # Ascend910 (Atlas training series, 1st gen, short_soc Ascend910)
    "Ascend910A", "Ascend910B", "Ascend910PremiumA", "Ascend910ProA", "Ascend910ProB",
    # Ascend910B (Atlas A2 training/inference, short_soc Ascend910B)
    "Ascend910B1", "Ascend910B2", "Ascend910B2C", "Ascend910B3", "Ascend910B4-1", "Ascend910B4",
    # Ascend910_93 (Atlas A3 training/inference)
    "Ascend910_9362", "Ascend910_9363", "Ascend910_9372", "Ascend910_9381", "Ascend910_9382", "Ascend910_9391",
    "Ascend910_9392",
    # Ascend950 (Ascend 950PR / 950DT) [cann-dev dir]
    "Ascend950DT_950x", "Ascend950DT_950y", "Ascend950DT_9571", "Ascend950DT_9572", "Ascend950DT_9573",
    "Ascend950DT_9574", "Ascend950DT_9575", "Ascend950DT_9576", "Ascend950DT_9577", "Ascend950DT_9578",
    "Ascend950DT_9581", "Ascend950DT_9581x", "Ascend950DT_9582", "Ascend950DT_9582x", "Ascend950DT_9583",
    "Ascend950DT_9584", "Ascend950DT_9585", "Ascend950DT_9586", "Ascend950DT_9587", "Ascend950DT_9588",
    "Ascend950DT_9591", "Ascend950DT_9592", "Ascend950DT_9595", "Ascend950DT_9596", "Ascend950DT_95A1",
    "Ascend950DT_95A2", "Ascend950PR_950z", "Ascend950PR_9579", "Ascend950PR_957b", "Ascend950PR_957bx",
    "Ascend950PR_957c", "Ascend950PR_957d", "Ascend950PR_9589", "Ascend950PR_958b", "Ascend950PR_9599",
    # Ascend350 (Atlas 350 card) [cann-dev dir]
    "Ascend350_354f", "Ascend350_355e",
    # Ascend031/Ascend035 (IPC / IPV350 class)
    "Ascend031", "Ascend035", "Ascend035A", "Ascend035B",
    # Kirin (Kirin9030/KirinX90, KirinDev*)
    "KirinDev0000", "KirinDev0001", "KirinDev0002", "KirinDev0003", "Kirin9030", "KirinX90",
    # Ascend310 (Atlas 200/300/500 inference, 1st gen)
    "Ascend310",
)
RETIRED: tuple[str, ...] = ("Ascend610", "Ascend910_5591", "BS9SX1AA", "BS9SX1AB", "BS9SX1AC", "BS9SX2AB",
                           "Ascend950PR_958a")


def check_soc_version(name: str, where: str) -> None:
    """A ``UserError`` naming ``where`` and the closest known names when ``name`` is no known SoC."""
    if name not in SOC_VERSIONS and name not in RETIRED:
        raise UserError(f"{where}: unknown soc_version {name!r}{closest(name, SOC_VERSIONS + RETIRED)}; "
                        "a SoC newer than graphopt's list: set atc.soc_version_unlisted: true")
