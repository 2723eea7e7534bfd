"""The command line: ``python -m functional_sgd lesson | lr-sweep | digits | agreement``
(or the installed ``functional-sgd``).

Bad input gets one line on stderr and exit status 2, never a traceback: it
is reported against the command it was given to, a typo of a command or an
option gets a suggestion, and no command at all lists the commands.
"""

import argparse
import difflib
import os
import sys

from ._compile_cache import CACHE_ENV, cache_folder, use_compile_cache
from ._extras import check_extras
from ._shared import (DIGITS_FILES, LESSON_FILES, SWEEP_FILES, UsageError,  # noqa: F401
                      check_batch_size, out_folder)
from ._options import (INT32_MAX, LR_RANGE, MAX_RATES, SEED_LIMIT, fraction, int_in,
                       learning_rate, share)

PROG = "python -m functional_sgd"
USAGE_ERROR = 2


AGREEMENT_MAX_STEPS = 100_000
"""The agreement table runs torch's eager loop six times, one Python step at a time."""

RATES = f"[{LR_RANGE[0]:g}, {LR_RANGE[1]:g}]"


class _Parser(argparse.ArgumentParser):
    """One line per error, raised (argparse would print its usage and exit);
    keeps its option names, so a typo of one gets a suggestion."""

    def __init__(self, *args, **kwargs):
        self.option_names = []  # before argparse adds --help
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.option_names.extend(action.option_strings)
        return action

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")

    def unrecognized(self, extras):
        """Raises the error for arguments this command does not take."""
        names = {name.lstrip("-"): name for name in self.option_names}  # the dashes all match
        close = [names[match] for token in extras if token.startswith("--")
                 for match in difflib.get_close_matches(token.split("=")[0].lstrip("-"), names,
                                                        n=1)]
        hint = (f"; did you mean {close[0]}?" if close
                else f" ({self.prog} --help lists its options)")
        self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


class NoCommand(Exception):
    """No command was given: the list of commands is printed."""


def program_name(argv0):
    """The program as it was called: the installed ``functional-sgd`` script
    by its name, ``python -m functional_sgd`` (whose ``argv[0]`` is
    ``__main__.py``) as :data:`PROG`."""
    name = os.path.basename(argv0 or "")
    return PROG if name in ("", "__main__.py") else name


def _listing(names):
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def command_of(argv, commands, prog):
    """The command that ``argv`` names, checked before argparse reads it:
    ``None`` for ``--help``; a typo gets the nearest command, an option before
    any command a note that options go after it; no command raises :class:`NoCommand`."""
    for at, token in enumerate(argv):
        if token in ("-h", "--help"):
            return None
        if token.startswith("-"):
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(argv[at:])}; "
                             f"options go after the command ({prog} COMMAND --options)")
        if token in commands:
            return token
        close = difflib.get_close_matches(token, commands, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"{prog}: error: unknown command {token!r}; {hint}the commands are "
                         f"{', '.join(commands)} ({prog} --help says what each does)")
    raise NoCommand


def _line_options(parser, *, steps_help, batch_help):
    """Options of the commands that fit the lesson's line."""
    parser.add_argument("--n", type=int_in(1, INT32_MAX), default=100,
                        help=f"rows of data, at most {INT32_MAX} and what memory holds "
                             "(default 100)")
    parser.add_argument("--steps", type=int_in(1, INT32_MAX), default=100, help=steps_help)
    parser.add_argument("--batch-size", type=int_in(1, INT32_MAX), default=None,
                        help=batch_help)


def _holdout_option(parser, what_is_done):
    parser.add_argument("--holdout", type=share, default=None, metavar="FRACTION",
                        help="also draw round(FRACTION * --n) held-out rows of the same line, "
                             "FRACTION in (0, 1], from a key of their own (the training rows "
                             f"do not change); {what_is_done}")


def _compile_cache_option(parser):
    parser.add_argument("--compile-cache", action=argparse.BooleanOptionalAction, default=True,
                        help="keep compiled programs in the user's cache folder, so the next "
                             f"run skips their compiles (default on; {CACHE_ENV}=0 turns it "
                             "off, a path moves it)")


SEED_SPLIT = "data_key, batch_key = jax.random.split(jax.random.key(SEED))"
"""What ``--seed`` means in every command, as in the README's first example."""


def _seed_option(parser, keys_use):
    parser.add_argument("--seed", type=int_in(0, SEED_LIMIT - 1), default=0,
                        help=f"every random draw comes from it, as in the README: {SEED_SPLIT}; "
                             f"{keys_use}; in [0, {SEED_LIMIT - 1}] (default 0)")


LINE_KEYS = ("the data are lesson_data(data_key, n) (--holdout rows: lesson_data("
             "jax.random.fold_in(data_key, 1), rows)), the mini-batches are drawn from batch_key")


def _common(parser, *, out_files, keys_use=LINE_KEYS):
    _compile_cache_option(parser)
    _seed_option(parser, keys_use)
    written = f"{_listing(out_files)} {'is' if len(out_files) == 1 else 'are'} written"
    parser.add_argument("--out", default="out", metavar="FOLDER",
                        help=f"folder for the figures, created if missing; only {written} "
                             "there (default ./out)")
    parser.add_argument("--no-figures", action="store_true", help="print only, draw nothing")


def _parser(prog=PROG):
    """The parser and its commands, ``{name: (parser, one-line summary)}``."""
    parser = _Parser(
        prog=prog, usage=f"{prog} COMMAND [options]",
        description="The fast.ai lesson on stochastic gradient descent, in JAX: "
        "every training loop runs as one compiled call.",
        epilog=f"{prog} COMMAND --help lists a command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     prog=prog)  # not the usage line: it would lead theirs
    summaries = {}

    def command(name, **kwargs):
        summaries[name] = kwargs["help"]
        return commands.add_parser(name, **kwargs)

    lesson = command(
        "lesson", help="fit the lesson's line by batch, mini-batch and stochastic descent",
        description="Fits y = 3x + 2 + U(0, 1) from a = (0.5, 0.75) by batch, mini-batch and "
        "stochastic descent; prints the loss as the lesson does, the fitted a, the agreement "
        "with the torch reference (when torch is installed) and the time taken; draws the "
        "fit, the losses, the learning-rate lesson, the gradient and a GIF of the training. "
        "With --holdout, also the loss on held-out rows of the same line, measured inside "
        "the compiled loop.")
    _line_options(lesson, steps_help=f"updates per mode, at most {INT32_MAX} and what memory "
                  "holds (default 100)",
                  batch_help="rows per mini-batch step, at most --n (default 10, or n if smaller)")
    lesson.add_argument("--lr", type=learning_rate, default=0.1,
                        help=f"learning rate in {RATES} (default 0.1)")
    lesson.add_argument("--every", type=int_in(1, INT32_MAX), default=None,
                        help="print the loss every this many steps (default 10; steps/10 "
                             "on runs longer than 100 steps)")
    _holdout_option(lesson, "their loss is evaluated inside the compiled loop (every step "
                    "of batch descent, every --every steps of mini-batch and stochastic descent, "
                    "every step of the learning-rate lesson), printed beside the training loss "
                    "and drawn dashed in lesson_losses.png and learning_rates.png (default: "
                    "off, as in the lesson)")
    lesson.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar while training (default: only on a terminal)")
    lesson.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="check against the torch reference when torch imports "
                             "(default on, up to 10000 steps)")
    _common(lesson, out_files=LESSON_FILES)

    sweep = command(
        "lr-sweep", help="train many learning rates at once and plot loss against rate",
        description="Trains the lesson's line once per learning rate, every rate from the "
        "same start on the same batches, all in one compiled call (jax.vmap over fit); "
        "prints the best rate and the edge of divergence and plots final loss against rate. "
        "With --holdout, also each rate's loss on held-out rows of the same line.")
    _line_options(sweep, steps_help=f"updates per run, at most {INT32_MAX} and what memory "
                  "holds (default 100)",
                  batch_help="rows per step, at most --n (default: full batch)")
    sweep.add_argument("--lr-min", type=learning_rate, default=1e-3,
                       help=f"smallest rate, in {RATES} (default 0.001)")
    sweep.add_argument("--lr-max", type=learning_rate, default=3.0,
                       help=f"largest rate, in {RATES} (default 3)")
    sweep.add_argument("--num", type=int_in(2, MAX_RATES), default=64,
                       help=f"rates, spaced evenly on a log scale, 2 to {MAX_RATES} "
                            "(default 64)")
    _holdout_option(sweep, "every rate's loss on them after its last step is evaluated in "
                    "the same compiled call, printed beside its final loss and drawn in "
                    "lr_sweep.png, with the best rate on them (default: off)")
    _common(sweep, out_files=SWEEP_FILES)

    digits = command(
        "digits", help="the lesson's linear classifier of 3s versus 7s",
        description="Trains the score (x * w).sum() + b of each image to tell 3s from 7s by "
        "mini-batch SGD, measuring the held-out accuracy every epoch inside the compiled loop "
        "and stopping when it has not improved for --patience epochs (keeping the best "
        "weights); on scikit-learn's bundled 8x8 digits, or on a folder laid out like "
        "fastai's MNIST_SAMPLE.")
    digits.add_argument("--data", metavar="FOLDER", default=None,
                        help="folder with train/3, train/7, valid/3, valid/7 of PNG images "
                             "(default: scikit-learn's 8x8 digits, split at random)")
    digits.add_argument("--loss", choices=("mnist", "cross-entropy"), default="mnist",
                        help="the lesson's mnist_loss or binary cross-entropy (default mnist)")
    digits.add_argument("--lr", type=learning_rate, default=1.0,
                        help=f"learning rate in {RATES} (default 1)")
    digits.add_argument("--epochs", type=int_in(1, INT32_MAX), default=30,
                        help="passes over the training images, at most (default 30)")
    digits.add_argument("--patience", type=int_in(1, INT32_MAX), default=12,
                        help="stop once the validation accuracy has not improved for this "
                             "many epochs, and keep the weights of the best epoch "
                             "(default 12)")
    digits.add_argument("--batch-size", type=int_in(1, INT32_MAX), default=32,
                        help="images per step (default 32)")
    digits.add_argument("--valid-fraction", type=fraction, default=0.2,
                        help="share of the 8x8 digits held out (default 0.2)")
    _common(digits, out_files=DIGITS_FILES,
            keys_use="data_key shuffles the 8x8 digits before the split, batch_key draws the "
                     "initial weights and the batches")

    agreement = command(
        "agreement", help="how closely fit agrees with the torch reference, per mode and dtype",
        description="Runs functional_sgd.fit and the lesson's torch loop (reference.fit) on "
        "the lesson's data and the same batches, in float64 and float32, by batch, "
        "mini-batch and stochastic descent, and prints the largest differences of their "
        "params and losses, relative and absolute. Needs torch.")
    agreement.add_argument("--steps", type=int_in(1, AGREEMENT_MAX_STEPS), default=150,
                           help=f"updates per run, at most {AGREEMENT_MAX_STEPS} (the torch "
                                "loop is eager) (default 150)")
    agreement.add_argument("--lr", type=learning_rate, default=0.1,
                           help=f"learning rate in {RATES} (default 0.1)")
    _compile_cache_option(agreement)
    _seed_option(agreement, "the data are lesson_data(data_key), the batches of mini-batch and "
                            "stochastic descent are drawn from batch_key")
    return parser, {name: (sub, summaries[name]) for name, sub in commands.choices.items()}


def _print_commands(prog, commands):
    width = max(map(len, commands))
    print(f"usage: {prog} COMMAND [options]\n{prog}: error: no command given; the commands:",
          *(f"  {name:{width}}  {summary}" for name, (_, summary) in commands.items()),
          f"{prog} COMMAND --help lists a command's options.", sep="\n", file=sys.stderr)


def _who(prog, command):
    return prog if command is None else f"{prog} {command}"


def main(argv=None, *, prog=None):
    """Runs the command line; returns the exit status (0 when all went well).

    Args:
      argv: the arguments after the program's name (default ``sys.argv[1:]``).
      prog: the program's name in messages (default: as it was called, see
        :func:`program_name`, when ``argv`` is ``None``; else :data:`PROG`).
    """
    if prog is None:
        prog = program_name(sys.argv[0]) if argv is None else PROG
    argv = sys.argv[1:] if argv is None else list(argv)
    command = None
    try:
        parser, commands = _parser(prog)
        try:
            command = command_of(argv, commands, prog)
            args, extras = parser.parse_known_args(argv)
        except SystemExit as done:  # --help
            return done.code
        except NoCommand:
            _print_commands(prog, commands)
            return USAGE_ERROR
        if extras:
            commands[command][0].unrecognized(extras)
        check_extras(args)
        if args.compile_cache:
            use_compile_cache(cache_folder())
        from . import _commands

        run = {"lesson": _commands.lesson, "lr-sweep": _commands.lr_sweep,
               "digits": _commands.digits, "agreement": _commands.agreement}[args.command]
        return run(args)
    except UsageError as error:
        message = str(error)
        print(message if message.startswith(prog) else f"{_who(prog, command)}: error: {message}",
              file=sys.stderr)
        return USAGE_ERROR
    except (ValueError, OSError) as error:  # from the library: bad data, unreadable files
        print(f"{_who(prog, command)}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
