"""The claims report: `bnlab claims` reads RESULTS/tables/*.csv (bnlab.analysis.tables) and writes
RESULTS/CLAIMS.md, one section per claim: C1-C19, the claims made by the 2017 study, the BN
explainers and the papers they cite; C20-C26, mechanisms studied since (the extra studies);
C27 on, the questions researchers ask next (more extra studies). A
claim that bundles two hypotheses is two claims (C9a/b, C11a/b, C15a/b, C22a/b); BN under
a train/test mismatch in its inference mode (C8) and normalising by the test batch (C8b)
are two as well.

The claims are a ledger: one function per claim, registered in order by the @claim decorator,
which carries what is claimed, its source, the experiments whose tables it reads, its figure
and its margins and thresholds. The claim's texts are built from those same numbers, and the
function gets them as arguments, so the report states what the code tests. The function splits
the claim into comparisons between two arms (sets of members, one value per seed), judged
together by the rules of bnlab.analysis.verdicts (verdicts.RULES) against margins from
bnlab.analysis.margins; each comparison carries its settings, from which the claim's headline (its
scope) is built. Arms of one sweep table are paired by seed; a comparison of arms from two tables
says paired=False (Welch's t-test). Failed members (diverged_rule, collapsed_rule) count only
through their accuracy; a table with members planned but not done makes its claims partial.

A claim whose experiment has not been run says "not run". A claim that reads a column its
table lacks, or one that is NaN for every trained member it selects, is an error naming the
claim, the table and the column: the report is not written.
"""

# The package (the docstring above is also `bnlab claims --help`):
#   framework.py      Claim, the @claim decorator and LEDGER, Tables (reading and verifying
#                     RESULTS/tables), the rules for failed members, arm, build_claims
#   compare.py        what the claims share: BN against no BN per activation, common notes
#   mlds2017.py       C1-C8b, the 2017 study's claims
#   ioffe2015.py      C9a, C12, C19, the BN paper's (Ioffe & Szegedy 2015)
#   santurkar2018.py  C9b, C10, C11a, C11b, Santurkar et al. 2018's
#   explainers.py     C13-C18, the BN explainers' ("seed explainers")
#   mechanisms.py     C20-C26, mechanisms studied since (the extra studies)
#   studies.py        C27 on, the questions researchers ask next (the next extra studies)
#   report.py         render: CLAIMS.md
#   cli.py            main: `bnlab claims`, `python -m bnlab.analysis.claims`
# Best-lr selection (at_best_lr) is bnlab.analysis.selection's, which bnlab.analysis.figures shares.

from ..selection import ARM_KEYS, LR_SELECTION, ClaimError, at_best_lr, require, with_acc0
from . import (  # register the claims
    explainers,
    ioffe2015,
    mechanisms,
    mlds2017,
    santurkar2018,
    studies,
)
from .compare import ACC_MARGIN, ACTS, NORMS2, RELU_SIGMOID, SHIFT_MODES
from .framework import (
    CHANCE_SLACK,
    INIT_STEPS,
    LEDGER,
    MNIST_TEST_MAJORITY,
    MNIST_TRAIN_COUNTS,
    Claim,
    MissingTable,
    TableError,
    Tables,
    arm,
    build_claims,
    claim,
    collapsed_rule,
    diverged_rule,
    failed_members,
    frequency_loss,
    order_ledger,
    read_table,
)
from .mechanisms import GHOST_PROTOCOL
from .report import STATIC_DIFFERENCES, differences, render

order_ledger()  # report order, whatever the order the modules registered in

__all__ = [
    "ACC_MARGIN",
    "ACTS",
    "ARM_KEYS",
    "CHANCE_SLACK",
    "GHOST_PROTOCOL",
    "INIT_STEPS",
    "LEDGER",
    "LR_SELECTION",
    "MNIST_TEST_MAJORITY",
    "MNIST_TRAIN_COUNTS",
    "NORMS2",
    "RELU_SIGMOID",
    "SHIFT_MODES",
    "STATIC_DIFFERENCES",
    "Claim",
    "ClaimError",
    "MissingTable",
    "TableError",
    "Tables",
    "arm",
    "at_best_lr",
    "build_claims",
    "claim",
    "collapsed_rule",
    "differences",
    "diverged_rule",
    "explainers",
    "failed_members",
    "frequency_loss",
    "ioffe2015",
    "mechanisms",
    "mlds2017",
    "read_table",
    "render",
    "require",
    "santurkar2018",
    "studies",
    "with_acc0",
]
