"""`python -m jaxlm.eval_harness run --model jaxlm --model_args checkpoint=RUN --tasks ...`: lm-eval's command
line (every flag of `lm_eval run`) with the `jaxlm` model registered, by importing jaxlm.eval_harness first."""
import sys

from lm_eval.__main__ import cli_evaluate

import jaxlm.eval_harness  # noqa: F401  (registers the model `jaxlm` with lm-eval)


def main(argv=None) -> None:
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
