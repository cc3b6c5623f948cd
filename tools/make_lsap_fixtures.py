#!/usr/bin/env python3
"""Write the linear-sum-assignment fixtures under tests/fixtures/lsap/ from scipy.optimize.linear_sum_assignment.

Not run by CI: the fixture is committed. To regenerate (a venv outside the repo):

    python3 -m venv /tmp/lsapvenv
    /tmp/lsapvenv/bin/pip install numpy scipy
    /tmp/lsapvenv/bin/python tools/make_lsap_fixtures.py

Output: tests/fixtures/lsap/lsap.json
  {"versions": {...},
   "cases": [{"name", "rows", "cols", "maximize",
              "cost": row-major list (numbers, or the strings "inf" / "-inf" / "nan"),
              "error": null or "infeasible" / "invalid" (scipy raised ValueError),
              "row_ind", "col_ind", "total": scipy's answer when it did not raise}]}

Entries are written with repr() precision (17 significant digits), so both sides read the same doubles. With ties,
scipy's pairs are one optimum among several: the test compares total cost, not the pairs.
"""
import json
import math
import os

import numpy as np
import scipy
from scipy.optimize import linear_sum_assignment

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "lsap")


def enc(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == int(x) and abs(x) < 2**53:
        return int(x)
    return x


def case(name, cost, maximize=False):
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        cost = cost.reshape(cost.shape[0] if cost.size else 0, -1)
    rows, cols = cost.shape
    out = {"name": name, "rows": rows, "cols": cols, "maximize": maximize,
           "cost": [enc(x) for x in cost.ravel()], "error": None}
    try:
        r, c = linear_sum_assignment(cost, maximize=maximize)
        out["row_ind"] = [int(x) for x in r]
        out["col_ind"] = [int(x) for x in c]
        out["total"] = float(cost[r, c].sum())
    except ValueError as e:
        msg = str(e)
        out["error"] = "infeasible" if "infeasible" in msg else "invalid"
        out["scipy_message"] = msg
    return out


def main():
    rng = np.random.default_rng(20240605)
    cases = []
    # Random uniform costs, several shapes (DETR-like tall / wide, square).
    for rows, cols in [(1, 1), (2, 3), (3, 2), (5, 5), (8, 13), (13, 8), (30, 30), (60, 7), (7, 60), (100, 20),
                       (20, 100), (64, 64)]:
        cases.append(case(f"uniform_{rows}x{cols}", rng.random((rows, cols))))
    # Maximize.
    cases.append(case("maximize_12x9", rng.random((12, 9)), maximize=True))
    cases.append(case("maximize_9x12", rng.random((9, 12)), maximize=True))
    cases.append(case("maximize_neg_inf_4x4", np.where(rng.random((4, 4)) < 0.3, -np.inf, rng.random((4, 4))),
                      maximize=True))
    # Ties: small integer costs, all-equal, rank-one.
    # (value ranges about 3x the larger side, so optima are not trivially zero but ties abound)
    for rows, cols in [(10, 10), (25, 6), (6, 25), (40, 40)]:
        cases.append(case(f"int_ties_{rows}x{cols}", rng.integers(0, 3 * max(rows, cols), (rows, cols))))
    cases.append(case("int_ties_binary_12x12", rng.integers(0, 2, (12, 12)) + np.triu(np.ones((12, 12)), 3)))
    cases.append(case("all_equal_7x5", np.full((7, 5), 3.0)))
    cases.append(case("all_zero_6x6", np.zeros((6, 6))))
    cases.append(case("outer_sum_8x8", np.add.outer(np.arange(8.0), np.arange(8.0))))
    cases.append(case("negative_10x15", rng.normal(size=(10, 15)) * 1e3))
    cases.append(case("large_range_9x9", rng.random((9, 9)) * 10.0 ** rng.integers(-6, 7, (9, 9))))
    # Degenerate shapes.
    cases.append(case("row_1x9", rng.random((1, 9))))
    cases.append(case("col_9x1", rng.random((9, 1))))
    cases.append(case("row_1x3_inf", [[np.inf, 2.0, np.inf]]))
    cases.append(case("empty_0x5", np.zeros((0, 5))))
    cases.append(case("empty_5x0", np.zeros((5, 0))))
    cases.append(case("empty_0x0", np.zeros((0, 0))))
    # +inf (forbidden pairs), feasible.
    for rows, cols, p in [(10, 10, 0.5), (30, 12, 0.6), (12, 30, 0.6), (20, 20, 0.8)]:
        m = rng.random((rows, cols))
        m[rng.random((rows, cols)) < p] = np.inf
        # Keep it feasible: a random full assignment stays finite.
        k = min(rows, cols)
        rr = rng.permutation(rows)[:k]
        cc = rng.permutation(cols)[:k]
        m[rr, cc] = rng.random(k)
        cases.append(case(f"inf_{rows}x{cols}_p{p}", m))
    cases.append(case("inf_diag_only_5x5", np.where(np.eye(5) > 0, 1.0, np.inf)))
    # Infeasible.
    cases.append(case("infeasible_all_inf_3x3", np.full((3, 3), np.inf)))
    m = rng.random((4, 4))
    m[:, 0] = np.inf
    m[:, 1] = np.inf  # rows 0..3 compete for columns 2 and 3 only
    cases.append(case("infeasible_two_cols_4x4", m))
    m = rng.random((3, 6))
    m[1, :] = np.inf
    cases.append(case("infeasible_row_3x6", m))
    # Invalid entries.
    m = rng.random((4, 5))
    m[2, 3] = np.nan
    cases.append(case("invalid_nan_4x5", m))
    m = rng.random((4, 5))
    m[1, 4] = -np.inf
    cases.append(case("invalid_neg_inf_4x5", m))
    m = rng.random((3, 3))
    m[0, 2] = np.inf
    cases.append(case("invalid_inf_maximize_3x3", m, maximize=True))

    os.makedirs(OUT, exist_ok=True)
    doc = {"versions": {"numpy": np.__version__, "scipy": scipy.__version__}, "cases": cases}
    path = os.path.join(OUT, "lsap.json")
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
