"""Three solvers of the placement problem behind one interface, all scored by ``evaluate_plan``.

* ``cpsat``: exact. The path program (below): a bound from each request's cheapest path
  alone, reduced costs from the program's linear relaxation (HiGHS) or, on fleets too
  large for it, from Lagrangian prices on the devices' computation, then OR-Tools CP-SAT
  on the variables whose reduced cost leaves them a chance (see :func:`solve_cpsat`);
  returns the proven optimum, or the best plan with a proven bound and the gap when the
  time limit stops it.
* ``heuristic``: the paper's Section IV-C: the unit program (below) with every 0-1
  variable relaxed to [0, 1] (its "one device per block" no longer binds: a unit may be
  split over devices), solved as a linear program (HiGHS), then rounded by the paper's
  Algorithm 1: per request, the drop set with the largest relaxed weight; per unit in
  network order, among the devices the relaxation used the one with the highest data rate
  from the device holding the activation (staying on it is best), ties - the first unit,
  where every device sees the same image - to the larger MAC rate; a device without room
  left for the unit is skipped. The LP value is a valid lower bound.
* ``ga``: a genetic algorithm (pymoo), the paper's MATLAB ``ga``: integer genes (per
  request a drop set and a device per unit), uniform crossover, random-reset mutation,
  constraint violations ranked before the objective (feasibility first).

The unit program (the paper's variables). Per request r, unit u, device i: ``loc[r,u,i]``
(where the activation is after unit u: its device, or the previous unit's if u is
dropped), ``x[r,u,i]`` (u is computed on i; equal to ``loc`` for units that cannot be
dropped), ``s[r,k]`` (request r uses drop set k; one per request, only measured sets, so
accuracy is a table look-up), and the link product ``z[r,u,i,k] = loc[r,u,i] *
loc[r,u+1,k]`` linearised as a transportation problem (rows of z sum to ``loc[r,u]``,
columns to ``loc[r,u+1]``), which is exact for 0-1 values. A dropped unit sits where its
input is (``sum_i z[r,u-1,i,i] >= dropped``), so a hop out of it is the paper's
skip-connection transfer. ``y[i,u]`` marks the weights of u stored on i (memory).

The path program (the same plans, the same objective, a tighter relaxation). A request's
plan is a path through a layered graph over the unit boundaries: a *run* arc computes
units a..b-1 on one device (only runs whose MACs, weights and computing energy fit the
device on their own exist), a *transfer* arc moves the activation before unit b from
device i to k (after a run it must move: two runs on one device in a row are one run), a
*skip* arc drops a unit on the device holding the activation, the *start* arc sends the
image from its source to the stem's device. One path per request (flow conservation), its
skip arcs exactly its drop set ``s[r,k]``; the devices' limits sum the arcs over runs and
requests. Identical devices (same figures, same links, no image on them) get their loads
ordered. Its relaxation cannot spread a run too large for one device fractionally over
devices without paying transfers, which the unit program's can.

Costs are per unit of objective; CP-SAT needs integers, so the objective is multiplied by
a power of ten and rounded: large enough that the smallest term keeps
:data:`OBJECTIVE_RESOLUTION` integer steps (the alpha = 0 tie-break terms are ~1e-10), at
most :data:`MAX_OBJECTIVE_SCALE`; each term is off by at most 0.5 / scale, see
:func:`cpsat_tolerance`, and the energy rows are in microjoules with coefficients rounded
up and budgets down, so CP-SAT never accepts a plan that ``evaluate_plan`` rejects. Memory
(bytes) and computation (MACs) rows are exact integers.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .problem import CONSTRAINTS, DROPPED, Plan, Problem, evaluate_batch, evaluate_plan

__all__ = [
    "SOLVERS",
    "SolveResult",
    "binding_constraints",
    "cpsat_tolerance",
    "import_backends",
    "quick_plan",
    "solve",
    "solve_cpsat",
    "solve_ga",
    "solve_heuristic",
]

OBJECTIVE_RESOLUTION = 100
"""CP-SAT's objective scale gives the smallest cost term at least this many integer steps."""

MAX_OBJECTIVE_SCALE = 1e13
"""...but never more than this (integer objective sums stay far inside int64)."""

FULL_LP_MAX_VARS = 40_000
"""CP-SAT uses its full linear relaxation up to this many variables."""

PATH_MAX_ARCS = 20_000
"""Transfer arcs the path program may have for its linear relaxation (it takes about a
second at this size); larger fleets get Lagrangian reduced costs instead."""

RESTRICTED_MAX_ARCS = 4 * PATH_MAX_ARCS
"""A program restricted by the Lagrangian slack is not searched with more transfer arcs."""

RESTRICT_FIRST = 0.002
"""CP-SAT first searches the variables whose reduced cost is within this share of the
bound (small programs: their plans are good hints for the larger rounds after)."""

ROUND_SHARE = 0.15
"""Each restricted CP-SAT search may take this share of the time limit..."""

MIN_ROUND_SECONDS = 1.0
"""...or this long, if more."""

LAGRANGE_SHARE = 0.4
"""On large fleets the exact solver's Lagrangian steps may take this share of the time
limit (all of it where the arcs' slack would not fit after them)..."""

LAGRANGE_STEPS = 40
"""...and at most this many steps (the bound hardly moves after)."""

LAGRANGE_TARGET = 0.25
"""Each step aims this share of the way from the bound to the best plan's objective (the
plans of the first steps are far above the optimum: aiming at them overshoots)."""

LAGRANGE_FIRST = 0.001
"""On large fleets CP-SAT first searches the arcs whose slack is within this share of the
bound (the Lagrangian bound is tight there, the programs within 1% take seconds)."""

SLACK_PASSES = 6
"""The arcs' slack costs about this many cheapest-path passes (forward, backward, arcs)..."""

MIN_SEARCH_SECONDS = 0.2
"""...and it is only computed with this much time left after it for CP-SAT; a last
search of everything (a program built then) starts only with this much time left."""

MICROJOULES = 1e6
RESOURCE_FAMILIES = tuple(c for c in CONSTRAINTS if c != "assignment")


@dataclass(frozen=True)
class SolveResult:
    """What a solver returns.

    ``status``: ``optimal`` (proven), ``feasible`` (a plan, optimality not proven),
    ``infeasible`` (proven: no plan meets the constraints) or ``unknown`` (no plan found,
    nothing proven). ``objective`` is ``evaluate_plan``'s value of ``plan`` (NaN without a
    plan); ``bound`` a proven lower bound on the optimum (NaN if the solver has none);
    ``gap`` = objective - bound (absolute: objectives are normalised to about [0, 1]).
    """

    solver: str
    plan: Plan | None
    objective: float
    bound: float
    gap: float
    status: str
    seconds: float
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready summary (the plan as a device table, -1 = dropped)."""
        return {
            "solver": self.solver, "status": self.status, "objective": self.objective,
            "bound": self.bound, "gap": self.gap, "seconds": self.seconds,
            "plan": None if self.plan is None else self.plan.devices.tolist(), **self.info,
        }


def _result(solver: str, problem: Problem, plan: Plan | None, status: str, bound: float,
            started: float, **info) -> SolveResult:
    objective = float("nan")
    if plan is not None:
        evaluation = evaluate_plan(problem, plan)
        if not evaluation.feasible:  # a solver bug: never hand out an infeasible plan
            raise RuntimeError(f"{solver} returned a plan that violates "
                               f"{[c.name for c in evaluation.constraints if not c.satisfied]}")
        objective = evaluation.objective
    gap = max(objective - bound, 0.0) if np.isfinite(bound) and plan is not None else float("nan")
    return SolveResult(solver, plan, objective, bound, gap, status,
                       time.monotonic() - started, info)


# ---------------------------------------------------------------------------------------
# The 0-1 program, built once in a solver-neutral form (sparse rows over 0-1 variables).


@dataclass
class _Program:
    """Rows ``lo <= sum(coef * var) <= hi`` over variables in [0, 1], plus a cost vector."""

    n_vars: int = 0
    smallest: float | None = None  # the least cost the objective's scale resolves (None: its own)
    rows: list[tuple[np.ndarray, np.ndarray, float, float, str]] = field(default_factory=list)
    cost: dict[int, float] = field(default_factory=dict)

    def new(self, *shape: int) -> np.ndarray:
        count = int(np.prod(shape))
        ids = np.arange(self.n_vars, self.n_vars + count).reshape(shape)
        self.n_vars += count
        return ids

    def row(self, ids: Iterable, coefs: Iterable, lo: float, hi: float,
            family: str = "assignment") -> None:
        self.rows.append((np.asarray(ids, dtype=np.int64).ravel(),
                          np.asarray(coefs, dtype=float).ravel(), lo, hi, family))

    def add_cost(self, ids: np.ndarray, coefs: np.ndarray) -> None:
        for var, c in zip(np.ravel(ids), np.broadcast_to(coefs, np.shape(ids)).ravel(),
                          strict=True):
            if c != 0.0:
                self.cost[int(var)] = self.cost.get(int(var), 0.0) + float(c)


@dataclass
class _Model:
    program: _Program
    options: list[tuple[int, ...]]
    loc: np.ndarray  # (R, U, N) where the activation is after each unit
    x: np.ndarray  # (R, U, N) computed-on variables
    s: np.ndarray  # (R, K) drop-set choice
    z: np.ndarray  # (R, U-1, N, N) link products
    y: np.ndarray  # (N, U) weights stored


@dataclass(frozen=True)
class _Terms:
    """What every program of one problem shares: its drop sets and objective coefficients."""

    enforce: set[str]
    options: list[tuple[int, ...]]  # drop sets a plan may use
    per_second: float  # objective per second of mean latency per request
    loss: np.ndarray  # (K,) objective of each drop set's accuracy loss on one request


def _terms(problem: Problem, enforce: Iterable[str]) -> _Terms | None:
    """The shared terms; ``None`` if the accuracy threshold leaves no drop set at all."""
    enforce = set(enforce)
    net = problem.network
    options = net.drop_options(problem.accuracy_threshold if "accuracy" in enforce else None)
    if not options:
        return None
    alpha, beta = problem.weights
    n_req = problem.n_requests
    loss = np.array([beta / n_req * (net.clean_accuracy - net.accuracy(o)) for o in options])
    return _Terms(enforce, options, alpha / (n_req * problem.reference_latency_s), loss)


def _build(problem: Problem, enforce: Iterable[str] = RESOURCE_FAMILIES) -> _Model | None:
    """The 0-1 program; ``None`` if the accuracy threshold leaves no drop set at all."""
    terms = _terms(problem, enforce)
    if terms is None:
        return None
    enforce, options, per_second = terms.enforce, terms.options, terms.per_second
    net, fleet = problem.network, problem.fleet
    n, n_units, n_req = fleet.n_devices, net.n_units, problem.n_requests
    p = _Program()
    loc = p.new(n_req, n_units, n)
    s = p.new(n_req, len(options))
    z = p.new(n_req, n_units - 1, n, n)
    x = loc.copy()
    droppable = np.flatnonzero(net.droppable)
    x[:, droppable] = p.new(n_req, len(droppable), n)
    y = p.new(n, n_units)
    mps = fleet.macs_per_second
    compute_s = net.macs[:, None] / mps[None, :]  # (U, N)
    unit_send = problem.transfer_seconds(net.output_bytes[:-1])  # (U-1, N, N)
    eye = np.eye(n, dtype=bool)
    energy_ids: list[list[np.ndarray]] = [[] for _ in range(n)]
    energy_coefs: list[list[np.ndarray]] = [[] for _ in range(n)]

    for r in range(n_req):
        p.row(s[r], np.ones(len(options)), 1, 1)
        for u in range(n_units):
            p.row(loc[r, u], np.ones(n), 1, 1)
        for u in droppable:
            containing = [k for k, opt in enumerate(options) if u in opt]
            # computed somewhere exactly when not dropped, and where the activation is
            p.row([*x[r, u], *s[r, containing]], np.ones(n + len(containing)), 1, 1)
            for i in range(n):
                p.row([x[r, u, i], loc[r, u, i]], [1, -1], -np.inf, 0)
            # a dropped unit stays where its input is: the hop into it is local
            p.row([*np.diag(z[r, u - 1]), *s[r, containing]],
                  [*np.ones(n), *-np.ones(len(containing))], 0, np.inf)
        for u in range(n_units - 1):
            for i in range(n):
                p.row([*z[r, u, i, :], loc[r, u, i]], [*np.ones(n), -1], 0, 0)
                p.row([*z[r, u, :, i], loc[r, u + 1, i]], [*np.ones(n), -1], 0, 0)
        if "compute" in enforce:
            _add_chain_cuts(p, problem, z[r], max(len(o) for o in options))
        p.add_cost(s[r], terms.loss)
        p.add_cost(x[r], per_second * compute_s)
        off = ~np.broadcast_to(eye, z[r].shape)
        p.add_cost(z[r][off], per_second * unit_send[off])
        image_s = problem.transfer_seconds(net.input_bytes)[problem.sources[r]]
        p.add_cost(loc[r, 0], per_second * image_s)
        for i in range(n):
            energy_ids[i] += [x[r, :, i], z[r, :, i, :][:, ~eye[i]]]
            energy_coefs[i] += [fleet.compute_power_w * compute_s[:, i],
                                fleet.transmit_power_w * unit_send[:, i, ~eye[i]]]
            if problem.sources[r] == i:
                energy_ids[i].append(loc[r, 0])
                energy_coefs[i].append(fleet.transmit_power_w * image_s)

    for i in range(n):
        for u in range(n_units):
            for r in range(n_req):
                p.row([y[i, u], x[r, u, i]], [1, -1], 0, np.inf)
        if "memory" in enforce:
            p.row(y[i], net.param_bytes, -np.inf, np.floor(fleet.memory_bytes[i]), "memory")
        if "compute" in enforce:
            p.row(x[:, :, i], np.broadcast_to(net.macs, (n_req, n_units)), -np.inf,
                  np.floor(mps[i] * problem.round_seconds), "compute")
        if "energy" in enforce:
            p.row(np.concatenate([np.ravel(a) for a in energy_ids[i]]),
                  np.concatenate([np.ravel(c) for c in energy_coefs[i]]),
                  -np.inf, fleet.energy_j[i], "energy")
    return _Model(p, options, loc, x, s, z, y)


def _add_chain_cuts(p: _Program, problem: Problem, z: np.ndarray, max_dropped: int) -> None:
    """Valid inequalities that tighten the relaxation (and so CP-SAT's bound).

    A run of consecutive units whose MACs, even with its ``max_dropped`` largest droppable
    units dropped, exceed the largest device's computation limit cannot stay on one device:
    one of the links inside it must cross devices. The relaxation could otherwise split the
    whole chain fractionally over devices without ever paying for a transfer. One cut per
    start unit, for the shortest such run (longer runs are implied).
    """
    net = problem.network
    limit = problem.fleet.macs_per_second.max() * problem.round_seconds
    n_units = net.n_units
    for first in range(n_units - 1):
        for last in range(first + 1, n_units):
            macs = net.macs[first:last + 1]
            droppable = np.sort(macs[net.droppable[first:last + 1]])[::-1]
            if macs.sum() - droppable[:max_dropped].sum() > limit:
                stay = np.concatenate([np.diag(z[u]) for u in range(first, last)])
                p.row(stay, np.ones(stay.size), -np.inf, last - first - 1, "compute")
                break


def _encode(problem: Problem, model: _Model, plan: Plan) -> np.ndarray | None:
    """The 0-1 variable values of a plan (``None`` if its drop sets are not in the model)."""
    values = np.zeros(model.program.n_vars)
    for r, row in enumerate(plan.devices):
        dropped = plan.dropped(r)
        if dropped not in model.options:
            return None
        values[model.s[r, model.options.index(dropped)]] = 1
        holder = problem.sources[r]
        where = []
        for u, device in enumerate(row):
            holder = holder if device == DROPPED else device
            where.append(holder)
            values[model.loc[r, u, holder]] = 1
            if device != DROPPED:
                values[model.x[r, u, device]] = 1
                values[model.y[device, u]] = 1
        for u in range(len(row) - 1):
            values[model.z[r, u, where[u], where[u + 1]]] = 1
    return values


def _unit_plan(model: _Model, values: np.ndarray) -> Plan:
    """The plan of the unit program's 0-1 values (computed where x = 1, else dropped)."""
    x = values[model.x] > 0.5  # (R, U, N)
    return Plan(np.where(x.any(axis=2), x.argmax(axis=2), DROPPED))


def _objective_scale(program: _Program) -> float:
    smallest = program.smallest or min((abs(c) for c in program.cost.values() if c != 0.0),
                                       default=1.0)
    return float(min(10.0 ** math.ceil(math.log10(OBJECTIVE_RESOLUTION / smallest)),
                     MAX_OBJECTIVE_SCALE))


# ---------------------------------------------------------------------------------------
# The path program: CP-SAT's model.


@dataclass
class _PathModel:
    """The path program's variables, by request: arcs of the layered graph (module doc)."""

    program: _Program
    options: list[tuple[int, ...]]
    s: np.ndarray  # (R, K) drop-set choice
    segment: list[dict[tuple[int, int, int], int]]  # (device, first unit, end unit) -> var
    hop: list[dict[tuple[int, int, int], int]]  # (boundary, from, to): after a segment
    land: list[dict[tuple[int, int, int], int]]  # (boundary, from, to): after a skip
    skip: list[dict[tuple[int, int, bool], int]]  # (unit, device, after a skip)
    start: list[dict[int, int]]  # device of the stem -> var
    load: list[dict[int, list[tuple[int, float]]]]  # device -> (var, MACs) of its segments
    complete: bool  # every device and every arc is in the model
    stored: dict[int, np.ndarray] = field(default_factory=dict)  # device -> y (U,) ids
    reduced: np.ndarray | None = None  # per variable: its slack (zeros without one)


def _segments(problem: Problem, enforce: set[str]) -> list[list[tuple[int, int]]]:
    """Per device, the runs of units (first, end) it may compute in one go.

    A run whose MACs, weights or computing energy alone exceed the device's limit is left
    out: no feasible plan uses it, and leaving it out is what makes this program's
    relaxation tight (a unit program's relaxation spreads such a run fractionally over
    devices without paying for a transfer).
    """
    net, fleet = problem.network, problem.fleet
    macs = np.concatenate([[0], np.cumsum(net.macs)])
    params = np.concatenate([[0], np.cumsum(net.param_bytes)])
    first, end = np.triu_indices(net.n_units + 1, 1)
    runs = []
    for i in range(fleet.n_devices):
        ok = np.ones(first.size, dtype=bool)
        run_macs = macs[end] - macs[first]
        if "compute" in enforce:
            ok &= run_macs <= fleet.macs_per_second[i] * problem.round_seconds
        if "memory" in enforce:
            ok &= params[end] - params[first] <= fleet.memory_bytes[i]
        if "energy" in enforce:
            ok &= fleet.compute_power_w * run_macs / fleet.macs_per_second[i] <= fleet.energy_j[i]
        runs.append(list(zip(first[ok].tolist(), end[ok].tolist(), strict=True)))
    return runs


def _boundary_seconds(problem: Problem) -> np.ndarray:
    """(U, N, N) seconds to send the activation before unit b (b = 0: the image)."""
    net = problem.network
    sizes = np.concatenate([[net.input_bytes], net.output_bytes[:-1]])
    return problem.transfer_seconds(sizes)


def _identical_devices(problem: Problem) -> list[list[int]]:
    """Classes (size >= 2) of devices that any plan may swap without changing anything.

    Same memory, MAC rate and battery, the same rate to and from every other device (and
    to each other both ways), and no request's image on them.
    """
    fleet, rates = problem.fleet, problem.rates_bps
    n = fleet.n_devices
    sources = set(problem.sources.tolist())
    classes: list[list[int]] = []
    for i in range(n):
        if i in sources:
            continue
        for members in classes:
            j = members[0]
            others = [k for k in range(n) if k not in (i, j)]
            if (fleet.memory_bytes[i] == fleet.memory_bytes[j]
                    and fleet.macs_per_second[i] == fleet.macs_per_second[j]
                    and fleet.energy_j[i] == fleet.energy_j[j]
                    and np.array_equal(rates[i, others], rates[j, others])
                    and np.array_equal(rates[others, i], rates[others, j])
                    and rates[i, j] == rates[j, i]):
                members.append(i)
                break
        else:
            classes.append([i])
    return [c for c in classes if len(c) > 1]


def _build_paths(problem: Problem, enforce: Iterable[str] = RESOURCE_FAMILIES,
                 devices: np.ndarray | None = None, slack: _Slack | None = None,
                 cutoff: float = math.inf) -> _PathModel | None:
    """The path program (module doc); ``None`` if the threshold leaves no drop set.

    ``devices`` (N,) bool: the devices it may use (default all). With ``slack``, only the
    arcs (and drop sets) whose slack is at most ``cutoff``: a plan using any other costs
    more than the Lagrangian bound + ``cutoff``; the model's ``reduced`` has each
    variable's slack.
    """
    terms = _terms(problem, enforce)
    if terms is None:
        return None
    net, fleet, n_req = problem.network, problem.fleet, problem.n_requests
    n, n_units, options = fleet.n_devices, net.n_units, terms.options
    mps, power_c, power_t = fleet.macs_per_second, fleet.compute_power_w, fleet.transmit_power_w
    runs = _segments(problem, terms.enforce)
    devices = np.ones(n, dtype=bool) if devices is None else devices
    runs = [r if devices[i] else [] for i, r in enumerate(runs)]
    links = devices[:, None] & devices[None, :] & ~np.eye(n, dtype=bool)
    active = np.flatnonzero(devices).tolist()
    # Only units some allowed drop set drops get skip arcs.
    skippable = np.zeros(n_units + 1, dtype=bool)
    skippable[[u for option in options for u in option]] = True
    cum_macs = np.concatenate([[0], np.cumsum(net.macs)])
    send_s = _boundary_seconds(problem)
    p = _Program()
    s = p.new(n_req, len(options))
    energy: list[tuple[list[int], list[float]]] = [([], []) for _ in range(n)]
    load: list[dict[int, list[tuple[int, float]]]] = []
    cover: dict[tuple[int, int, int], list[int]] = defaultdict(list)  # (r, i, u) -> runs
    model = _PathModel(p, options, s, [], [], [], [], [], [],
                       bool(devices.all()) and slack is None)
    reduced = [0.0] * p.n_vars
    if slack is not None:
        # Scaled as the whole program would be: CP-SAT's rounding stays below the margins.
        costs = np.concatenate([
            terms.loss, terms.per_second * send_s[:, ~np.eye(n, dtype=bool)].ravel(),
            terms.per_second * net.macs / mps.max()])
        p.smallest = float(costs[costs > 0].min())
        for var, value in zip(s.ravel(), slack.choice.ravel(), strict=True):
            reduced[var] = float(value)
            if value > cutoff:
                p.row([var], [1], 0, 0)

    def arc(cost_s: float = 0.0, sender: int | None = None, extra: float = 0.0) -> int:
        # Plain Python, not _Program.new / add_cost: tens of thousands of arcs.
        var = p.n_vars
        p.n_vars += 1
        reduced.append(float(extra))
        if cost_s > 0:
            p.cost[var] = terms.per_second * float(cost_s)
            if sender is not None:
                energy[sender][0].append(var)
                energy[sender][1].append(power_t * cost_s)
        return var

    every = (np.zeros((n_units + 1, n_units + 1, n)), np.zeros((n_units, n, n)),
             np.zeros((n_units, n, n)), np.zeros((n_units + 1, n, 2)), np.zeros(n))
    for r in range(n_req):
        src = int(problem.sources[r])
        p.row(s[r], np.ones(len(options)), 1, 1)
        p.add_cost(s[r], terms.loss)
        extra_run, extra_hop, extra_land, extra_skip, extra_start = every if slack is None \
            else (slack.run[r], slack.hop[r], slack.land[r], slack.skip[r], slack.start[r])
        # Flow into and out of the nodes: B = ready to compute unit b on device i (arrived),
        # E = a run just ended before unit b on i, F = unit b - 1 was skipped on i.
        # (kind, boundary, device) -> (arcs in, arcs out).
        flow: dict[tuple[str, int, int], tuple[list[int], list[int]]] = defaultdict(
            lambda: ([], []))
        start = {k: arc(send_s[0, src, k], src, extra_start[k]) for k in active
                 if (k == src or links[src, k]) and extra_start[k] <= cutoff}
        for k, var in start.items():
            flow["B", 0, k][0].append(var)
        segment, device_load = {}, {}
        for i in active:
            for a, b in runs[i]:
                if extra_run[a, b, i] > cutoff:
                    continue
                macs = float(cum_macs[b] - cum_macs[a])
                var = arc(macs / mps[i], extra=extra_run[a, b, i])
                energy[i][0].append(var)
                energy[i][1].append(power_c * macs / mps[i])
                device_load.setdefault(i, []).append((var, macs))
                segment[i, a, b] = var
                flow["B", a, i][1].append(var)
                flow["E", b, i][0].append(var)
                for u in range(a, b):
                    cover[r, i, u].append(var)
        hop, land, skip = {}, {}, {}
        for b in range(1, n_units):
            seconds = send_s[b].tolist()
            hops, lands = links & (extra_hop[b] <= cutoff), extra_land[b] <= cutoff
            lands &= links | np.eye(n, dtype=bool)
            for i in active:
                for k in np.flatnonzero(hops[i]).tolist():
                    hop[b, i, k] = var = arc(seconds[i][k], i, extra_hop[b, i, k])
                    flow["E", b, i][1].append(var)
                    flow["B", b, k][0].append(var)
                if skippable[b - 1]:
                    # staying (k = i) first
                    for k in sorted(np.flatnonzero(lands[i]).tolist(), key=lambda k: k != i):
                        land[b, i, k] = var = arc(seconds[i][k] if k != i else 0.0, i,
                                                  extra_land[b, i, k])
                        flow["F", b, i][1].append(var)
                        flow["B", b, k][0].append(var)
        for u in np.flatnonzero(skippable).tolist():
            for i in active:
                for after_skip in (False, True) if skippable[u - 1] else (False,):
                    if extra_skip[u, i, int(after_skip)] > cutoff:
                        continue
                    skip[u, i, after_skip] = var = arc(extra=extra_skip[u, i, int(after_skip)])
                    flow["F" if after_skip else "E", u, i][1].append(var)
                    flow["F", u + 1, i][0].append(var)
            containing = [k for k, opt in enumerate(options) if u in opt]
            ids = [v for (unit, _, _), v in skip.items() if unit == u]
            p.row([*ids, *s[r, containing]], [*np.ones(len(ids)), *-np.ones(len(containing))],
                  0, 0)
        p.row(list(start.values()), np.ones(len(start)), 1, 1)
        for (kind, b, _), (into, out) in flow.items():
            if kind != "E" or b < n_units:  # the head's runs end the path
                p.row([*into, *out], [*np.ones(len(into)), *-np.ones(len(out))], 0, 0)
        for lst, value in ((model.segment, segment), (model.hop, hop), (model.land, land),
                           (model.skip, skip), (model.start, start), (load, device_load)):
            lst.append(value)
    model.load = load

    total_macs, total_params = float(net.macs.sum()), float(net.param_bytes.sum())
    for i in active:
        runs_i = [pair for per_request in load for pair in per_request.get(i, [])]
        if "compute" in terms.enforce and n_req * total_macs > mps[i] * problem.round_seconds:
            p.row([v for v, _ in runs_i], [m for _, m in runs_i], -np.inf,
                  np.floor(mps[i] * problem.round_seconds), "compute")
        if "memory" in terms.enforce and total_params > fleet.memory_bytes[i]:
            y = model.stored[i] = p.new(n_units)
            for r in range(n_req):
                for u in range(n_units):
                    if cover[r, i, u]:
                        p.row([y[u], *cover[r, i, u]], [1, *-np.ones(len(cover[r, i, u]))],
                              0, np.inf)
            p.row(y, net.param_bytes, -np.inf, np.floor(fleet.memory_bytes[i]), "memory")
        ids, coefs = energy[i]
        if "energy" in terms.enforce and ids:
            worst = sum(np.sort(np.array(coefs))[::-1][:n_req * (2 * n_units + 1)])
            if worst > fleet.energy_j[i]:
                p.row(ids, coefs, -np.inf, fleet.energy_j[i], "energy")
    if model.complete:
        # Identical devices: order their loads (any plan has a swap that does so).
        for members in _identical_devices(problem):
            for i, j in itertools.pairwise(members):
                mine = [pair for per_request in load for pair in per_request.get(i, [])]
                theirs = [pair for per_request in load for pair in per_request.get(j, [])]
                p.row([v for v, _ in mine] + [v for v, _ in theirs],
                      [m for _, m in mine] + [-m for _, m in theirs], 0, np.inf, "symmetry")
    model.reduced = np.concatenate([reduced, np.zeros(p.n_vars - len(reduced))])
    return model


def _decode_paths(model: _PathModel, values: np.ndarray, n_units: int) -> Plan:
    """The plan of the path program's 0-1 values: each chosen run's units on its device."""
    devices = np.full((len(model.segment), n_units), DROPPED)
    for r, segment in enumerate(model.segment):
        for (i, a, b), var in segment.items():
            if values[var] > 0.5:
                devices[r, a:b] = i
    return Plan(devices)


def _encode_paths(problem: Problem, model: _PathModel, plan: Plan) -> np.ndarray | None:
    """The path program's 0-1 values of a plan (``None``: an arc of it is not in the model)."""
    values = np.zeros(model.program.n_vars)
    n_units = problem.network.n_units
    try:
        for r, row in enumerate(plan.devices):
            dropped = plan.dropped(r)
            if dropped not in model.options:
                return None
            values[model.s[r, model.options.index(dropped)]] = 1
            values[model.start[r][int(row[0])]] = 1
            u, skipped, holder = 0, False, int(row[0])
            while u < n_units:
                if row[u] == DROPPED:
                    values[model.skip[r][u, holder, skipped]] = 1
                    u, skipped = u + 1, True
                    continue
                if u > 0:
                    arcs = model.land[r] if skipped else model.hop[r]
                    values[arcs[u, holder, int(row[u])]] = 1
                end = u + 1
                while end < n_units and row[end] == row[u]:
                    end += 1
                holder = int(row[u])
                values[model.segment[r][holder, u, end]] = 1
                if holder in model.stored:
                    values[model.stored[holder][u:end]] = 1
                u, skipped = end, False
    except KeyError:
        return None
    return values


class _Paths:
    """Every request's cheapest path for every drop set at once, under device prices.

    The graph is the path program's; ``prices`` (N,) per MAC computed on each device are
    added to the runs' costs (the Lagrange multipliers of the devices' computation limits).
    """

    def __init__(self, problem: Problem, terms: _Terms) -> None:
        net, fleet = problem.network, problem.fleet
        self.problem = problem
        self.options, per_second = terms.options, terms.per_second
        self.per_second = per_second
        n, n_units, n_req = fleet.n_devices, net.n_units, problem.n_requests
        self.hop = per_second * _boundary_seconds(problem)  # (U, N, N), 0 on the diagonal
        self.leave = self.hop + np.where(np.eye(n, dtype=bool), np.inf, 0.0)  # must move
        cum_macs = np.concatenate([[0], np.cumsum(net.macs)]).astype(float)
        self.run_macs = cum_macs[None, :] - cum_macs[:, None]  # (U+1, U+1): a..b-1
        self.run_cost = np.full((n_units + 1, n_units + 1, n), np.inf)
        for i, runs in enumerate(_segments(problem, terms.enforce)):
            for a, b in runs:
                self.run_cost[a, b, i] = per_second * self.run_macs[a, b] / fleet.macs_per_second[i]
        # One row per (request, drop set).
        k = len(self.options)
        self.request = np.repeat(np.arange(n_req), k)
        self.option = np.tile(np.arange(k), n_req)
        dropped = np.zeros((k, n_units + 1), dtype=bool)
        for j, option in enumerate(self.options):
            dropped[j, list(option)] = True
        self.dropped = dropped[self.option]  # (J, U+1)
        # The first dropped unit at or after each unit: runs from b end at most there.
        first = np.where(self.dropped, np.arange(n_units + 1), n_units)
        self.run_end = np.minimum.accumulate(first[:, ::-1], axis=1)[:, ::-1]
        self.loss = terms.loss[self.option]

    def solve(self, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per request: the cheapest path's cost (with prices) and its device row."""
        problem = self.problem
        n_units, n = problem.network.n_units, problem.fleet.n_devices
        rows = self.request.size
        run_cost = self.run_cost + prices[None, None, :] * self.run_macs[:, :, None]
        shape = (n_units + 1, rows, n)
        ready, ended, skipped = (np.full(shape, np.inf) for _ in range(3))
        came_from = np.zeros(shape, dtype=np.int64)
        after_run = np.zeros(shape, dtype=bool)
        skip_after_skip = np.zeros(shape, dtype=bool)
        run_first = np.zeros(shape, dtype=np.int64)
        ready[0] = self.hop[0, problem.sources[self.request]]
        for b in range(n_units):
            if b > 0:
                # Where a run ended (the rows that computed unit b - 1) or unit b - 1 was
                # skipped (the others): the minimum over the device it moves from.
                end_cost, skip_cost = np.full((2, rows, n), np.inf)
                from_end, from_skip = np.zeros((2, rows, n), dtype=np.int64)
                for part, base, arcs, cost, source in (
                        (~self.dropped[:, b - 1], ended[b], self.leave[b], end_cost, from_end),
                        (self.dropped[:, b - 1], skipped[b], self.hop[b], skip_cost, from_skip)):
                    if part.any():
                        via = base[part][:, :, None] + arcs[None]
                        source[part] = via.argmin(axis=1)
                        cost[part] = np.take_along_axis(via, source[part][:, None, :], 1)[:, 0]
                after_run[b] = end_cost <= skip_cost
                came_from[b] = np.where(after_run[b], from_end, from_skip)
                ready[b] = np.minimum(end_cost, skip_cost)
            drop = self.dropped[:, b][:, None]
            skip_after_skip[b + 1] = skipped[b] < ended[b]
            skipped[b + 1] = np.where(drop, np.minimum(skipped[b], ended[b]), np.inf)
            start = np.where(drop, np.inf, ready[b])
            for end in range(b + 1, n_units + 1):
                cost = start + run_cost[b, end][None]
                cost[self.run_end[:, b] < end] = np.inf
                better = cost < ended[end]
                ended[end] = np.where(better, cost, ended[end])
                run_first[end] = np.where(better, b, run_first[end])
        total = ended[n_units].min(axis=1) + self.loss
        self.forward = (run_cost, ready, ended, skipped)
        n_req = problem.n_requests
        per_request = total.reshape(n_req, -1)
        best_rows = per_request.argmin(axis=1) + np.arange(n_req) * per_request.shape[1]
        devices = np.full((n_req, n_units), DROPPED)
        for r, j in enumerate(best_rows):
            if not np.isfinite(total[j]):
                continue
            device, kind, b = int(ended[n_units, j].argmin()), "E", n_units
            while kind != "B" or b > 0:
                if kind == "E":
                    first = int(run_first[b, j, device])
                    devices[r, first:b] = device
                    kind, b = "B", first
                elif kind == "B":
                    kind = "E" if after_run[b, j, device] else "F"
                    device = int(came_from[b, j, device])
                else:
                    kind, b = ("F" if skip_after_skip[b, j, device] else "E"), b - 1
        return total[best_rows], devices


    def slack(self, prices: np.ndarray) -> _Slack:
        """How much more than its cheapest path each arc costs a request, under ``prices``.

        The cheapest path through an arc is the cost to reach its tail (the forward pass of
        :meth:`solve`) plus the arc plus the cheapest way on from its head (a backward pass
        over the same graph, which depends on the drop set but not on the request), for the
        request's best drop set through it.
        """
        costs, _ = self.solve(prices)
        run_cost, ready, ended, skipped = self.forward
        n_units, n = self.problem.network.n_units, self.problem.fleet.n_devices
        n_req, n_options = self.problem.n_requests, len(self.options)
        dropped, run_end = self.dropped[:n_options], self.run_end[:n_options]
        # Cost from each node to the path's end, per drop set: B = ready before unit b,
        # E = a run ended before b, F = unit b - 1 skipped (as in solve).
        shape = (n_units + 1, n_options, n)
        on_b, on_e, on_f = (np.full(shape, np.inf) for _ in range(3))
        on_e[n_units] = 0.0
        for b in range(n_units - 1, -1, -1):
            for end in range(b + 1, n_units + 1):
                cost = run_cost[b, end][None] + on_e[end]
                cost[(run_end[:, b] < end) | dropped[:, b]] = np.inf
                on_b[b] = np.minimum(on_b[b], cost)
            drop = dropped[:, b][:, None]
            on_e[b] = np.where(drop, on_f[b + 1],
                               (on_b[b][:, None, :] + self.leave[b][None]).min(axis=2))
            on_f[b] = np.where(drop, on_f[b + 1],
                               (on_b[b][:, None, :] + self.hop[b][None]).min(axis=2))
        on_b, on_e, on_f = on_b[:, self.option], on_e[:, self.option], on_f[:, self.option]
        offset = self.loss - costs[self.request]

        def per_request(through: np.ndarray) -> np.ndarray:
            # (rows, ...) -> (R, ...): the request's best drop set, less its cheapest path
            extra = through + offset.reshape((-1,) + (1,) * (through.ndim - 1))
            return np.maximum(extra.reshape(n_req, n_options, *through.shape[1:]).min(axis=1),
                              0.0)

        runs = np.full((n_req, n_units + 1, n_units + 1, n), np.inf)
        hops, lands = (np.full((n_req, n_units, n, n), np.inf) for _ in range(2))
        skips = np.full((n_req, n_units + 1, n, 2), np.inf)
        for a in range(n_units):
            for end in range(a + 1, n_units + 1):
                through = ready[a] + run_cost[a, end][None] + on_e[end]
                through[(self.run_end[:, a] < end) | self.dropped[:, a]] = np.inf
                runs[:, a, end] = per_request(through)
            if a > 0:
                # A hop leaves a run's end, a landing a skip (of unit a - 1).
                after_skip = self.dropped[:, a - 1][:, None, None]
                onward = self.hop[a] + on_b[a][:, None, :]
                hops[:, a] = per_request(np.where(after_skip, np.inf,
                                                  ended[a][:, :, None] + onward))
                lands[:, a] = per_request(np.where(after_skip, skipped[a][:, :, None] + onward,
                                                   np.inf))
            drop = self.dropped[:, a][:, None]
            for k, came in enumerate((ended[a], skipped[a])):
                skips[:, a, :, k] = per_request(np.where(drop, came + on_f[a + 1], np.inf))
        hops[:, :, np.arange(n), np.arange(n)] = np.inf  # after a run the activation moves
        total = ended[n_units].min(axis=1) + self.loss
        capacity = self.problem.fleet.macs_per_second * self.problem.round_seconds
        return _Slack(float(costs.sum() - prices @ capacity), runs, hops, lands, skips,
                      per_request(ready[0] + on_b[0]),
                      np.maximum(total.reshape(n_req, -1) - costs[:, None], 0.0))


@dataclass(frozen=True)
class _Slack:
    """Lagrangian reduced costs of the path program's arcs, per request.

    How much more than the request's cheapest path (under the prices) its cheapest path
    through the arc costs; inf: no path uses the arc.
    """

    bound: float  # the Lagrangian bound at these prices
    run: np.ndarray  # (R, U+1, U+1, N): units a..b-1 on device i
    hop: np.ndarray  # (R, U, N, N): before unit b from i to k, after a run
    land: np.ndarray  # (R, U, N, N): before unit b from i to k, after a skip
    skip: np.ndarray  # (R, U+1, N, 2): unit u skipped on i (after a run, after a skip)
    start: np.ndarray  # (R, N): the stem on device k
    choice: np.ndarray  # (R, K): the drop set

    def arcs(self, cutoff: float) -> int:
        """Transfer arcs (hops and landings) whose slack is at most ``cutoff``."""
        return int(np.count_nonzero(self.hop <= cutoff) + np.count_nonzero(self.land <= cutoff))


def _path_bound(problem: Problem, enforce: Iterable[str] = RESOURCE_FAMILIES,
                seconds: float = 0.0, incumbent: float = math.inf,
                prices: np.ndarray | None = None,
                repair: Callable[[Plan], float] | None = None
                ) -> tuple[float, Plan | None, np.ndarray]:
    """A lower bound on the optimum, the plan that attains it, and the prices of the bound.

    Each request's cheapest path through the path program's graph on its own (for each
    allowed drop set): the devices' limits bind only on single runs, not summed over runs
    and requests. The sum over requests is a valid bound; if the plan of those paths meets
    every constraint it is optimal. For ``seconds``, the bound is then raised by
    Lagrangian relaxation of the devices' computation limits: a price per MAC on each
    device (subgradient steps towards ``incumbent``, an objective some plan reaches),
    which also spreads the paths over devices: ``repair`` turns each step's paths into a
    plan and returns the best objective found so far, which the next steps aim at.
    ``prices`` continues from earlier steps' prices. A step starts only if one as long as
    the last still fits in ``seconds``. ``(inf, None, prices)`` if some request has no
    path (the instance is infeasible).
    """
    started = time.monotonic()
    fleet = problem.fleet
    given = prices is not None
    prices = prices if given else np.zeros(fleet.n_devices)
    terms = _terms(problem, enforce)
    if terms is None:
        return math.inf, None, prices
    paths = _Paths(problem, terms)
    capacity = fleet.macs_per_second * problem.round_seconds
    costs, devices = paths.solve(prices)
    if not np.all(np.isfinite(costs)):
        return math.inf, None, prices
    bound, first = float(costs.sum() - prices @ capacity), Plan(devices)
    step, best_prices, last_step, steps = 1.0, prices, 0.0, 0

    def improve() -> None:
        nonlocal incumbent
        if repair is not None:
            incumbent = min(incumbent, repair(Plan(devices)))
    net = problem.network
    if seconds > 0 and not given:
        # First prices: fill the devices cheapest per MAC first with every request's MACs
        # (fractionally); each device cheaper than the last one needed is priced up to it.
        per_mac = paths.per_second / fleet.macs_per_second
        order = np.argsort(per_mac)
        filled = np.cumsum(capacity[order])
        demand = sum(float(net.macs[row != DROPPED].sum()) for row in devices)
        last = order[min(int(np.searchsorted(filled, demand)), order.size - 1)]
        prices = np.maximum(per_mac[last] - per_mac, 0.0)
        costs, devices = paths.solve(prices)
        if (value := float(costs.sum() - prices @ capacity)) > bound:
            bound, best_prices = value, prices
        improve()
    while time.monotonic() - started + last_step < seconds and steps < LAGRANGE_STEPS:
        step_started, steps = time.monotonic(), steps + 1
        load = np.zeros(fleet.n_devices)
        for row in devices:
            on = row != DROPPED
            np.add.at(load, row[on], net.macs[on])
        gradient = load - capacity
        gradient[(prices <= 0) & (gradient < 0)] = 0.0
        if not np.any(gradient) or not np.isfinite(incumbent):
            break
        value = float(costs.sum() - prices @ capacity)
        target = bound + LAGRANGE_TARGET * (incumbent - bound)
        prices = np.maximum(prices + step * (target - value) / float(gradient @ gradient)
                            * gradient, 0.0)
        costs, devices = paths.solve(prices)
        value = float(costs.sum() - prices @ capacity)
        if value > bound:
            bound, best_prices = value, prices
        else:
            step /= 2
        improve()
        last_step = time.monotonic() - step_started
    return bound, first, best_prices


def _tolerance(problem: Problem, program: _Program) -> float:
    scale = _objective_scale(program)
    return problem.n_requests * (2 * problem.network.n_units + 1) / scale


def cpsat_tolerance(problem: Problem) -> float:
    """How far CP-SAT's plan may be above the true optimum from rounding the objective.

    A request's path has at most 2U + 1 arcs with a cost (U runs, U - 1 transfers, the
    image's transfer, one drop set); each cost is rounded by at most 0.5 / scale, so the
    plan CP-SAT proves optimal is within twice that sum of the true optimum.
    """
    model = _build_paths(problem)
    if model is None:
        return problem.n_requests * (2 * problem.network.n_units + 1) / MAX_OBJECTIVE_SCALE
    return _tolerance(problem, model.program)


def _cpsat(program: _Program, time_limit: float, workers: int, seed: int,
           with_objective: bool, hint: np.ndarray | None = None,
           work_limit: float | None = None, floor: float | None = None,
           keep: np.ndarray | None = None):
    """(status, 0-1 values or None, bound) of ``program``.

    ``time_limit`` counts from the call: building a large model takes part of it.
    ``floor``: a known lower bound on the objective; ``keep``: which variables may be 1
    (the others are fixed at 0 and left out of the model).
    """
    from ortools.sat.python import cp_model

    deadline = time.monotonic() + time_limit

    cp = cp_model.CpModel()
    keep = np.ones(program.n_vars, dtype=bool) if keep is None else keep
    var = [cp.new_bool_var(f"v{j}") if kept else None for j, kept in enumerate(keep)]
    for ids, coefs, lo, hi, family in program.rows:
        kept = keep[ids]
        ids, coefs = ids[kept], coefs[kept]
        if ids.size == 0:
            if lo <= 0 <= hi:
                continue
            return "infeasible", None, float("nan")
        if family == "energy":  # microjoules, rounded so that CP-SAT is never optimistic
            coefs = np.ceil(coefs * MICROJOULES)
            hi = np.floor(hi * MICROJOULES)
        integral = np.round(coefs)
        if np.abs(coefs - integral).max() > 1e-6:
            raise AssertionError(f"non-integer coefficients in a {family} row")
        expr = cp_model.LinearExpr.weighted_sum([var[j] for j in ids],
                                                integral.astype(np.int64).tolist())
        if lo == hi:
            cp.add(expr == int(lo))
        else:
            if np.isfinite(lo):
                cp.add(expr >= int(np.ceil(lo)))
            if np.isfinite(hi):
                cp.add(expr <= int(np.floor(hi)))
    scale = _objective_scale(program)
    if with_objective:
        items = [(var[j], round(c * scale)) for j, c in program.cost.items() if keep[j]]
        objective = cp_model.LinearExpr.weighted_sum([v for v, _ in items],
                                                     [c for _, c in items])
        cp.minimize(objective)
        if floor is not None and np.isfinite(floor):
            cp.add(objective >= math.floor(floor * scale))
    if hint is not None:
        for v, value in zip(var, hint, strict=True):
            if v is not None:
                cp.add_hint(v, bool(value))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(deadline - time.monotonic(), 0.01)
    if work_limit is not None:
        solver.parameters.max_deterministic_time = float(work_limit)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    # By default CP-SAT installs its own SIGINT handler for the solve and leaves SIGINT's
    # default action behind: a ROS node (rclpy installs a handler) then dies of SIGINT
    # instead of shutting down. Without it, Ctrl-C is seen when the solve returns, within
    # its time limit.
    solver.parameters.catch_sigint_signal = False
    # The full linear relaxation inside the search gives much better bounds on this problem,
    # but on large models it costs the whole time limit before a first solution.
    solver.parameters.linearization_level = 2 if program.n_vars <= FULL_LP_MAX_VARS else 1
    status = solver.solve(cp)
    values = None
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        values = np.zeros(program.n_vars)
        values[keep] = np.asarray(solver.boolean_values([v for v in var if v is not None]),
                                  dtype=float)
    name = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible",
            cp_model.INFEASIBLE: "infeasible"}.get(status, "unknown")
    bound = solver.best_objective_bound / scale if with_objective else float("nan")
    return name, values, bound


def quick_plan(problem: Problem, seconds: float = 0.0) -> tuple[Plan | None, float]:
    """A feasible plan in milliseconds (or None) and a lower bound on the optimum.

    The bound and its plan are :func:`_path_bound`'s; if that plan breaks a limit summed
    over runs and requests, Algorithm 1 places the units instead, preferring the devices
    of those paths (then every device, unguided), and the better feasible plan is kept.
    With ``seconds``, the Lagrangian steps of :func:`_path_bound` raise the bound and
    their paths guide Algorithm 1 too.
    """
    plan, bound, _, _ = _quick(problem, lambda _: seconds)
    return plan, bound


def _quick(problem: Problem, budget: Callable[[float], float]
           ) -> tuple[Plan | None, float, np.ndarray | None, float]:
    """:func:`quick_plan`, the prices of its bound and the seconds of one pass.

    ``budget``: the seconds for the Lagrangian steps, given how long one cheapest-path
    pass took. The prices are None without steps.
    """
    started = time.monotonic()
    bound, paths, _ = _path_bound(problem)
    pass_seconds = time.monotonic() - started
    seconds = budget(pass_seconds)
    if paths is None or evaluate_plan(problem, paths).feasible:
        return paths, bound, None, pass_seconds
    best, best_objective = None, math.inf

    def consider(guide: Plan | None) -> float:
        # Algorithm 1 guided by a plan: milliseconds
        nonlocal best, best_objective
        plan = _repair(problem, guide)
        evaluation = None if plan is None else evaluate_plan(problem, plan)
        if evaluation is not None and evaluation.feasible and evaluation.objective < best_objective:
            best, best_objective = plan, evaluation.objective
        return best_objective

    for guide in (paths, None):
        consider(guide)
    prices = None
    # Two passes come before the first step: none without time for them.
    if best is not None and seconds - (time.monotonic() - started) > 2 * pass_seconds:
        priced, _, prices = _path_bound(problem, seconds=seconds - (time.monotonic() - started),
                                        incumbent=best_objective, repair=consider)
        bound = max(bound, priced)
    return best, bound, prices, pass_seconds


def _repair(problem: Problem, guide: Plan | None) -> Plan | None:
    """Algorithm 1 preferring each unit's device in ``guide`` (None: unguided)."""
    net, n = problem.network, problem.fleet.n_devices
    options = net.drop_options(problem.accuracy_threshold)
    if guide is None:
        x = np.zeros((problem.n_requests, net.n_units, n))
        weight = np.zeros((problem.n_requests, len(options)))
    else:
        x = np.where(guide.devices[..., None] == np.arange(n), 1.0, 0.0)
        weight = np.array([[float(guide.dropped(r) == o) for o in options]
                           for r in range(problem.n_requests)])
    return _algorithm1(problem, options, x, weight)


def import_backends() -> None:
    """Import CP-SAT and HiGHS (about a second): a solve's time then counts only solving."""
    import ortools.sat.python.cp_model  # noqa: F401
    import scipy.optimize  # noqa: F401


def solve_cpsat(problem: Problem, time_limit: float = 10.0, workers: int = 1,
                seed: int = 0, warm_start: bool = True, work_limit: float | None = None,
                max_arcs: int = PATH_MAX_ARCS) -> SolveResult:
    """Solve exactly: a bound and reduced costs, then CP-SAT (``workers`` threads).

    ``time_limit`` is wall-clock seconds for all of it; ``work_limit`` optionally also
    stops each CP-SAT search after that much *deterministic* time (about a second of one
    core each, but the same on a loaded machine). With one worker and a ``work_limit``
    that stops the searches before ``time_limit`` does, the result depends only on the
    problem and ``seed``; with more workers CP-SAT's threads race (the proven optimum's
    value does not change, the plan among equally good ones and a gap left may).

    1. :func:`quick_plan`: a bound and, with ``warm_start``, a plan in milliseconds (proven
       optimal at once if it meets the bound).
    2. Reduced costs. On a fleet whose path program has at most ``max_arcs`` transfer
       arcs: the program's linear relaxation (HiGHS), a tighter bound, its reduced costs
       and (``warm_start``) Algorithm 1 guided by it. On a larger one (the relaxation alone
       would take longer than a second), up to :data:`LAGRANGE_SHARE` of the time on
       Lagrangian prices of the devices' computation (:func:`_path_bound`; their paths
       guide Algorithm 1 too), then each arc's slack at the best prices
       (:meth:`_Paths.slack`): the Lagrangian bound plus an arc's slack is a lower bound
       on every plan that uses it.
    3. CP-SAT on the variables whose reduced cost is at most ``delta`` (on a large fleet a
       program built from those arcs alone): a plan using any other costs more than
       bound + ``delta``. If CP-SAT proves the best plan among them within bound +
       ``delta`` (or proves there is none, which raises the bound), that is proven for
       every plan; ``delta`` starts small and grows up to the incumbent's gap.
    4. With time left and no proof: CP-SAT on everything that can still beat the
       incumbent (on a small fleet the whole unit program, which CP-SAT searches better
       when the drop sets are what is hard to choose).

    No step starts without time left for it: the solve returns within ``time_limit``
    (plus one cheapest-path pass on fleets where that takes long). The status is
    ``optimal`` only when proven; otherwise ``feasible`` with the bound and the gap.
    ``info`` has ``relative_gap`` (gap / objective), ``reduced_costs`` (``relaxation``,
    ``lagrangian`` or ``none``: no time for them) and ``stages`` (seconds and bound after
    each step).
    """
    started = time.monotonic()
    stages: list[dict] = []

    def stage(name: str, bound: float) -> None:
        stages.append({"stage": name, "seconds": round(time.monotonic() - started, 4),
                       "bound": bound})

    def left() -> float:
        return time_limit - (time.monotonic() - started)

    n, n_units = problem.fleet.n_devices, problem.network.n_units
    per_link = problem.n_requests * n_units
    large = per_link * n * (n - 1) > max_arcs

    def lagrange_seconds(pass_seconds: float) -> float:
        # Where the arcs' slack and a search fit after the steps, their share; else the
        # steps get the time (a better bound and, by Algorithm 1, a better plan).
        if not large:
            return 0.0
        if (1 - LAGRANGE_SHARE) * time_limit > SLACK_PASSES * pass_seconds + MIN_SEARCH_SECONDS:
            return LAGRANGE_SHARE * time_limit
        return time_limit - pass_seconds

    incumbent, bound, prices, pass_seconds = _quick(problem, lagrange_seconds)
    stage("paths", bound)
    if not np.isfinite(bound):  # some request has no path even on its own
        return _result("cpsat", problem, None, "infeasible", float("nan"), started)
    info = {"reduced_costs": "none", "stages": stages}

    def score(plan: Plan | None) -> float:
        evaluation = None if plan is None else evaluate_plan(problem, plan)
        return evaluation.objective if evaluation is not None and evaluation.feasible \
            else math.inf

    best = score(incumbent) if warm_start else math.inf
    if not warm_start:
        incumbent = None
    if best <= bound + 1e-12:
        return _finish(problem, incumbent, "optimal", bound, started, info)

    # restrict(delta): a program with every plan whose variables' reduced costs are at
    # most delta (None: too large to search), and which of its variables may be 1.
    restrict: Callable[[float], tuple[_PathModel, np.ndarray | None] | None] | None = None
    floor = bound
    if large and left() > SLACK_PASSES * pass_seconds + MIN_SEARCH_SECONDS:
        paths = _Paths(problem, _terms(problem, RESOURCE_FAMILIES))
        slack = paths.slack(np.zeros(n) if prices is None else prices)
        floor = slack.bound
        bound = max(bound, floor)
        info["reduced_costs"] = "lagrangian"
        stage("lagrangian slack", bound)

        def restrict(delta: float) -> tuple[_PathModel, None] | None:
            if slack.arcs(delta) > RESTRICTED_MAX_ARCS:
                return None
            return _build_paths(problem, slack=slack, cutoff=delta), None
    elif not large:
        full = _build_paths(problem)
        status, values, lp_bound, reduced = _relaxation(full.program, left() / 2)
        if status == "infeasible":
            return _result("cpsat", problem, None, "infeasible", float("nan"), started)
        if status == "optimal":
            floor = lp_bound
            bound = max(bound, lp_bound)
            info["reduced_costs"] = "relaxation"
            stage("relaxation", bound)
        if warm_start and values is not None:
            guided = _algorithm1(problem, full.options, _unit_shares(problem, full, values),
                                 values[full.s])
            if score(guided) < best:
                incumbent, best = guided, score(guided)
        reduced = np.zeros(full.program.n_vars) if reduced is None else reduced

        def restrict(delta: float) -> tuple[_PathModel, np.ndarray]:
            # A margin for HiGHS's tolerances on the reduced costs.
            return full, reduced <= delta + 1e-6 * max(abs(floor), 1e-12)

    tolerance = 0.0 if large else _tolerance(problem, full.program)

    def search(delta: float, seconds: float) -> tuple[str, float] | None:
        """CP-SAT on restrict(delta): (status, its bound); None if it is too large.

        ``seconds`` counts from the call: building the restricted program takes part of it.
        """
        nonlocal incumbent, best, tolerance
        until = time.monotonic() + seconds
        part = restrict(delta)
        if part is None:
            return None
        model, keep = part
        tolerance = max(tolerance, _tolerance(problem, model.program))
        hint = None if incumbent is None else _encode_paths(problem, model, incumbent)
        if hint is not None and keep is not None and np.any(hint[~keep] > 0):
            hint = None
        status, values, cp_bound = _cpsat(model.program, until - time.monotonic(), workers,
                                          seed, True,
                                          hint=hint, work_limit=work_limit,
                                          floor=floor - tolerance, keep=keep)
        if values is not None:
            plan = _decode_paths(model, values, n_units)
            if score(plan) < best:
                incumbent, best = plan, score(plan)
        return status, cp_bound

    delta = max((LAGRANGE_FIRST if large else RESTRICT_FIRST) * abs(floor), 2 * tolerance,
                1e-12)
    proven = False
    # Without a plan to compare with, only a search of everything can prove infeasibility.
    while (info["reduced_costs"] != "none" and left() > 0.01
           and delta <= best - floor < math.inf and not proven):
        # Each round its share of the time limit, but at least a second (or all that is
        # left): the first round usually settles it, and more rounds cannot fit anyway.
        found = search(delta, min(left(), max(ROUND_SHARE * time_limit, MIN_ROUND_SECONDS)))
        if found is None:
            break
        status, cp_bound = found
        # Plans outside the restriction cost more than floor + delta; those inside at least
        # CP-SAT's bound (of the rounded objective, up to the tolerance below the true one).
        inside = {"optimal": best - tolerance, "infeasible": math.inf}.get(
            status, cp_bound - tolerance)
        bound = max(bound, min(inside, floor + delta, best))
        stage(f"cpsat, reduced cost <= {delta:.3g}", bound)
        if status not in ("optimal", "infeasible"):
            break
        proven = best <= floor + delta + tolerance
        # Small steps: the programs grow fast with delta, and each round raises the bound.
        delta = delta * 4 if status == "infeasible" else min(delta * 4, best - floor)
    if not proven and left() > MIN_SEARCH_SECONDS and (info["reduced_costs"] != "none"
                                                      or not large):
        # The restricted searches did not settle it: search what is left for the time
        # left. CP-SAT searches the unit program (a device per unit) better than the path
        # program when the drop sets are what is hard to choose; it is the smaller one
        # only for small fleets.
        units = _build(problem) if n * n * per_link <= max_arcs else None
        found = None
        if units is not None:
            # The paper's heuristic on its own program: CP-SAT starts from the better plan,
            # so the exact solver's plan is never worse than the heuristic's.
            _, paper, _ = _heuristic(problem, units, left() / 4)
            if score(paper) < best:
                incumbent, best = paper, score(paper)
            hint = None if incumbent is None else _encode(problem, units, incumbent)
            status, values, cp_bound = _cpsat(units.program, left(), workers, seed, True,
                                              hint=hint, work_limit=work_limit)
            plan = None if values is None else _unit_plan(units, values)
            if score(plan) < best:
                incumbent, best = plan, score(plan)
            tolerance = max(tolerance, _tolerance(problem, units.program))
            found = status, cp_bound
        else:
            found = search(best - floor, left())
        if found is not None:
            status, cp_bound = found
            if status == "infeasible" and incumbent is None and not large:
                return _result("cpsat", problem, None, "infeasible", float("nan"), started)
            inside = best - tolerance if status == "optimal" else cp_bound - tolerance
            bound = max(bound, min(inside, best))
            stage("cpsat, " + ("unit program" if units is not None else "all"), bound)
    if incumbent is None:
        return _result("cpsat", problem, None, "unknown", float("nan"), started, **info)
    proven = best <= bound + tolerance
    return _finish(problem, incumbent, "optimal" if proven else "feasible", bound, started,
                   info)


def _unit_shares(problem: Problem, model: _PathModel, values: np.ndarray) -> np.ndarray:
    """(R, U, N): the share of each unit on each device in the path program's values."""
    shares = np.zeros((problem.n_requests, problem.network.n_units, problem.fleet.n_devices))
    for r, segment in enumerate(model.segment):
        for (i, a, b), var in segment.items():
            shares[r, a:b, i] += values[var]
    return shares


def _finish(problem: Problem, plan: Plan, status: str, bound: float, started: float,
            info: dict) -> SolveResult:
    result = _result("cpsat", problem, plan, status, bound, started, **info)
    result.info["relative_gap"] = result.gap / result.objective if result.objective > 0 else 0.0
    return result


def binding_constraints(problem: Problem, time_limit: float = 10.0) -> tuple[str, ...]:
    """Which constraint families make an instance infeasible (empty if it is feasible).

    The families whose removal alone makes it feasible; if no single one does, those that
    are infeasible on their own; else all of them together.
    """

    def feasible(enforce: Iterable[str]) -> bool:
        model = _build_paths(problem, enforce)
        if model is None:
            return False
        status, _, _ = _cpsat(model.program, time_limit, 1, 0, with_objective=False)
        return status in ("optimal", "feasible")

    if feasible(RESOURCE_FAMILIES):
        return ()
    binding = tuple(f for f in RESOURCE_FAMILIES
                    if feasible([g for g in RESOURCE_FAMILIES if g != f]))
    if binding:
        return binding
    alone = tuple(f for f in RESOURCE_FAMILIES if not feasible([f]))
    return alone or RESOURCE_FAMILIES


# ---------------------------------------------------------------------------------------
# The paper's relaxation + Algorithm 1.


def _relaxation(program: _Program, time_limit: float
                ) -> tuple[str, np.ndarray | None, float, np.ndarray | None]:
    """Solve the LP relaxation with HiGHS: (status, values, optimal value, reduced costs).

    The reduced cost of a variable at 0 is how much the objective must rise at least if it
    were 1; for the others it is 0.
    """
    # Imported here, as ortools and pymoo are by their solvers: scipy takes a while to
    # import, and `plan --help` or a CP-SAT plan does not need it.
    import scipy.sparse
    from scipy.optimize import linprog

    eq, ub = ([], [], []), ([], [], [])
    b_eq, b_ub = [], []

    def put(target, rhs, ids, coefs, value):
        row = len(rhs)
        target[0].extend([row] * len(ids))
        target[1].extend(ids.tolist())
        target[2].extend(coefs.tolist())
        rhs.append(value)

    for ids, coefs, lo, hi, _ in program.rows:
        if lo == hi:
            put(eq, b_eq, ids, coefs, lo)
            continue
        if np.isfinite(hi):
            put(ub, b_ub, ids, coefs, hi)
        if np.isfinite(lo):
            put(ub, b_ub, ids, -coefs, -lo)

    def matrix(parts, rhs):
        return scipy.sparse.csr_array((parts[2], (parts[0], parts[1])),
                                      shape=(len(rhs), program.n_vars))

    cost = np.zeros(program.n_vars)
    for j, c in program.cost.items():
        cost[j] = c
    # HiGHS's tolerances are absolute (1e-7): costs of ~1e-9 (an alpha = 0 tie-break) would
    # be noise to it, and made it slow and inexact. The optimum is the same when scaled.
    scale = float(np.abs(cost).max()) or 1.0
    res = linprog(cost / scale, A_ub=matrix(ub, b_ub), b_ub=b_ub, A_eq=matrix(eq, b_eq), b_eq=b_eq,
                  bounds=(0, 1), method="highs",
                  options={"time_limit": max(float(time_limit), 0.01)})
    if res.status == 2:
        return "infeasible", None, float("nan"), None
    if res.status != 0:
        return "unknown", None, float("nan"), None
    return "optimal", res.x, float(res.fun) * scale, np.maximum(res.lower.marginals, 0) * scale


class _Room:
    """Memory, computation and energy left on each device while Algorithm 1 places units."""

    def __init__(self, problem: Problem):
        fleet = problem.fleet
        self.problem = problem
        self.memory = fleet.memory_bytes.copy()
        self.macs = fleet.macs_per_second * problem.round_seconds
        self.energy = fleet.energy_j.copy()
        self.stored = np.zeros((fleet.n_devices, problem.network.n_units), dtype=bool)

    def costs(self, unit: int, device: int, holder: int, size: float):
        """(memory, MACs, energy on device, energy on holder) of computing unit there."""
        p, net, fleet = self.problem, self.problem.network, self.problem.fleet
        memory = 0.0 if self.stored[device, unit] else float(net.param_bytes[unit])
        compute_j = fleet.compute_power_w * net.macs[unit] / fleet.macs_per_second[device]
        send_j = 0.0 if device == holder else (
            fleet.transmit_power_w * size * 8.0 / p.rates_bps[holder, device])
        return memory, float(net.macs[unit]), compute_j, send_j

    def copy(self) -> _Room:
        other = _Room.__new__(_Room)
        other.problem = self.problem
        for key in ("memory", "macs", "energy", "stored"):
            setattr(other, key, getattr(self, key).copy())
        return other

    def fits(self, unit: int, device: int, holder: int, size: float) -> bool:
        memory, macs, compute_j, send_j = self.costs(unit, device, holder, size)
        # send_j is 0 when the unit stays on the holder, so the two energies never add up.
        return (memory <= self.memory[device] and macs <= self.macs[device]
                and compute_j <= self.energy[device] and send_j <= self.energy[holder])

    def take(self, unit: int, device: int, holder: int, size: float) -> None:
        memory, macs, compute_j, send_j = self.costs(unit, device, holder, size)
        self.memory[device] -= memory
        self.macs[device] -= macs
        self.energy[device] -= compute_j
        self.energy[holder] -= send_j
        self.stored[device, unit] = True


def _algorithm1(problem: Problem, options: list[tuple[int, ...]], x: np.ndarray,
                weight: np.ndarray) -> Plan | None:
    """Round a relaxation to one device per computed unit (the paper's Algorithm 1).

    ``x`` (R, U, N): the relaxation's share of each unit on each device; ``weight`` (R, K):
    its weight of each drop set in ``options``.
    """
    net, rates = problem.network, problem.rates_bps
    mps = problem.fleet.macs_per_second
    room = _Room(problem)
    devices = np.full((problem.n_requests, net.n_units), DROPPED)
    for r in range(problem.n_requests):
        loss = [net.clean_accuracy - net.accuracy(o) for o in options]
        for k in sorted(range(len(options)), key=lambda k: (-weight[r, k], loss[k])):
            trial = room.copy()
            placed = _place_request(problem, trial, x[r], options[k], r, rates, mps)
            if placed is not None:
                devices[r], room = placed, trial
                break
        else:
            return None
    return Plan(devices)


def _place_request(problem: Problem, room: _Room, x: np.ndarray, dropped: tuple[int, ...],
                   r: int, rates: np.ndarray, mps: np.ndarray) -> np.ndarray | None:
    """Algorithm 1 for one request and drop set: its device row (None: a unit fits nowhere).

    ``room`` is updated as units are placed.
    """
    net = problem.network
    row = np.full(net.n_units, DROPPED)
    holder, size = int(problem.sources[r]), float(net.input_bytes)
    for u in range(net.n_units):
        if u in dropped:
            continue
        # Highest rate from the activation's device first (itself: infinitely fast), then
        # the larger MAC rate; the relaxation's devices before the others.
        speed = np.where(np.arange(len(mps)) == holder, np.inf, rates[holder])
        order = np.lexsort((-mps, -speed, x[u] <= 1e-6))
        chosen = next((int(i) for i in order if room.fits(u, int(i), holder, size)), None)
        if chosen is None:
            return None
        room.take(u, chosen, holder, size)
        row[u], holder, size = chosen, chosen, float(net.output_bytes[u])
    return row


def _heuristic(problem: Problem, model: _Model, time_limit: float
               ) -> tuple[str, Plan | None, float]:
    """(status, plan or None, LP bound) of the relaxation + Algorithm 1."""
    status, values, bound, _ = _relaxation(model.program, time_limit)
    if values is None:
        return status, None, float("nan")
    plan = _algorithm1(problem, model.options, values[model.x], values[model.s])
    if plan is None or not evaluate_plan(problem, plan).feasible:
        return "unknown", None, bound
    return "feasible", plan, bound


def solve_heuristic(problem: Problem, time_limit: float = 10.0) -> SolveResult:
    """The paper's relaxation + Algorithm 1 (``time_limit`` bounds the linear program)."""
    started = time.monotonic()
    model = _build(problem)
    if model is None:
        return _result("heuristic", problem, None, "infeasible", float("nan"), started)
    status, plan, bound = _heuristic(problem, model, time_limit)
    return _result("heuristic", problem, plan, status, bound, started)


# ---------------------------------------------------------------------------------------
# The genetic algorithm.


def solve_ga(problem: Problem, time_limit: float = 10.0, seed: int = 0, pop_size: int = 100,
             generations: int = 300) -> SolveResult:
    """The genetic algorithm: ``generations`` generations or ``time_limit`` s, whichever first."""
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.config import Config
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem as PymooProblem
    from pymoo.operators.crossover.ux import UniformCrossover
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize
    from pymoo.termination.collection import TerminationCollection
    from pymoo.termination.max_gen import MaximumGenerationTermination
    from pymoo.termination.max_time import TimeBasedTermination

    Config.warnings["not_compiled"] = False
    started = time.monotonic()
    net, n = problem.network, problem.fleet.n_devices
    options = net.drop_options()
    drop_mask = np.zeros((len(options), net.n_units), dtype=bool)
    for k, option in enumerate(options):
        drop_mask[k, list(option)] = True
    n_req, genes = problem.n_requests, 1 + net.n_units

    def decode(genome: np.ndarray) -> np.ndarray:
        g = np.asarray(genome, dtype=np.int64).reshape(-1, n_req, genes)
        return np.where(drop_mask[g[:, :, 0]], DROPPED, g[:, :, 1:])

    class Placement(PymooProblem):
        def __init__(self):
            upper = np.tile([len(options) - 1, *[n - 1] * net.n_units], n_req)
            super().__init__(n_var=upper.size, n_obj=1, n_ieq_constr=len(CONSTRAINTS),
                             xl=np.zeros(upper.size), xu=upper, vtype=int)

        def _evaluate(self, genome, out, *args, **kwargs):
            scores = evaluate_batch(problem, decode(genome))
            out["F"] = scores.objective[:, None]
            out["G"] = scores.violation

    class RandomReset(Mutation):
        """Each gene is redrawn uniformly with probability 1 / genes."""

        def _do(self, pproblem, genome, *args, random_state=None, **kwargs):
            genome = np.array(genome, dtype=np.int64)
            redraw = random_state.random(genome.shape) < 1.0 / genome.shape[1]
            fresh = random_state.integers(pproblem.xl, pproblem.xu + 1, size=genome.shape)
            return np.where(redraw, fresh, genome)

    algorithm = GA(pop_size=pop_size, sampling=IntegerRandomSampling(),
                   crossover=UniformCrossover(), mutation=RandomReset(),
                   eliminate_duplicates=True)
    termination = TerminationCollection(MaximumGenerationTermination(generations),
                                        TimeBasedTermination(max(float(time_limit), 0.01)))
    res = minimize(Placement(), algorithm, termination, seed=seed, verbose=False)
    plan = None
    if res.X is not None:
        candidate = Plan(decode(res.X)[0])
        if evaluate_plan(problem, candidate).feasible:
            plan = candidate
    return _result("ga", problem, plan, "unknown" if plan is None else "feasible",
                   float("nan"), started, generations=int(res.algorithm.n_gen))


SOLVERS: dict[str, Callable[..., SolveResult]] = {
    "cpsat": solve_cpsat, "heuristic": solve_heuristic, "ga": solve_ga,
}
"""Solver name -> function ``(problem, time_limit, ...) -> SolveResult``."""


def solve(problem: Problem, solver: str = "cpsat", time_limit: float = 10.0,
          **options) -> SolveResult:
    """Solve with the named solver (one of :data:`SOLVERS`).

    Raises:
        OverflowError: The problem's costs overflow float64 (e.g. a link rate of 1e-306
            bit/s): a plan computed from infinities would be wrong without a word.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    try:
        with np.errstate(over="raise"):
            return SOLVERS[solver](problem, time_limit=time_limit, **options)
    except FloatingPointError as exc:
        raise OverflowError(f"{solver}: the problem's costs overflow ({exc}); look for rates, "
                            "memory or energy no fleet has") from exc
