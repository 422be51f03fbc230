"""``msrf train``: its options are made from the :class:`~msrfnet.config.Config` fields that declare
a flag (:data:`msrfnet.config.OPTIONS`: name, rule, help, section, in one place); the demo
defaults on the bundled sample; and ``--weights W``, a fine-tune, configured by
:func:`msrfnet.train.start.finetune_config` (what :func:`msrfnet.finetune` runs too)."""

from __future__ import annotations

import argparse

from msrfnet.config import OPTIONS, Config
from msrfnet.errors import MSRFError

__all__ = ["DEMO", "add_train", "cmd_train"]

#: Demo defaults for ``msrf train`` on the bundled sample: 75 steps, small enough to finish on 2 CPU
#: cores in a few minutes and to reach a validation DSC above 0.75 (measured: README, main job).
DEMO = {"image_size": 64, "epochs": 15, "batch_size": 4}


def _add_flags(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`Config` field that declares one (:data:`msrfnet.config.OPTIONS`), under
    its section's heading: the field's rule as ``type=`` (a bad value stops the parse), its help,
    and the default None (not given: the config's default, or the resumed run's value). A
    ``bool`` field's flag comes with its ``--no-`` form (``--augment`` / ``--no-augment``)."""
    sections: dict = {}
    for name, option in OPTIONS.items():
        if option.flag is None:
            continue
        if option.section not in sections:
            sections[option.section] = p.add_argument_group(option.section)
        if option.switch:
            kind = {"action": argparse.BooleanOptionalAction}
        else:
            kind = {"type": option.rule}
        help_ = option.help.replace("%", "%%")  # argparse formats help with %
        sections[option.section].add_argument(
            option.flag, dest=name, default=None, help=help_, **kind
        )


def _explicit(args: argparse.Namespace) -> dict:
    """The :class:`Config` fields given on the command line (a flag left out is None)."""
    return {
        name: getattr(args, name)
        for name, option in OPTIONS.items()
        if option.flag is not None and getattr(args, name, None) is not None
    }


def cmd_train(args: argparse.Namespace) -> int:
    from msrfnet.data import resolve_data_root
    from msrfnet.train.fit import resume_config, train

    given = _explicit(args)
    _native_scale(given)
    if args.resume and "weights" in given:
        raise MSRFError(
            f"--resume {args.resume} and --weights {given['weights']}: --resume continues a run "
            "from its own last checkpoint (optimizer state included), --weights starts a new "
            "run from weights; give one of them"
        )
    if "weights" in given:
        return _finetune(given)
    if args.resume:
        config = resume_config(args.resume)
        for k, v in given.items():
            setattr(config, k, v)
        train(config, resume=args.resume)
        return 0
    config = Config(**given)
    root, _ = resolve_data_root(config.data)
    from msrfnet.data import sample_root

    if root.resolve() == sample_root().resolve():
        demo = {k: v for k, v in DEMO.items() if k not in given}
        if config.patch_size:  # the model input is the patch
            demo.pop("image_size", None)
        for k, v in demo.items():
            setattr(config, k, v)
        if demo:
            print(
                "demo defaults on the bundled sample: "
                + ", ".join(f"{OPTIONS[k].flag} {v}" for k, v in demo.items())
            )
    train(config)
    return 0


def _finetune(given: dict) -> int:
    """``msrf train --weights W``: a fine-tune (:func:`msrfnet.train.finetune.train_from_weights`,
    the path of :func:`msrfnet.finetune` too), its defaults said on stdout."""
    from msrfnet.train.finetune import train_from_weights

    train_from_weights(given, print)
    return 0


def _native_scale(given: dict) -> None:
    """``--patch-size P`` makes P the model's input size (``image_size``); ``--scale`` needs it."""
    patch = given.get("patch_size")
    if "scale" in given and not patch:
        raise MSRFError(
            "--scale resamples the images of a native-scale run: give --patch-size too "
            "(the resize protocol resizes every image to --image-size anyway)"
        )
    if patch:
        if given.get("image_size", patch) != patch:
            raise MSRFError(
                f"--image-size {given['image_size']} and --patch-size {patch}: at native scale "
                "the model input is the patch; give --patch-size alone"
            )
        given["image_size"] = patch


def add_train(sub) -> None:
    """The ``train`` subcommand."""
    t = sub.add_parser("train", help="train on a dataset (the bundled sample when none is given)")
    _add_flags(t)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.set_defaults(func=cmd_train)
