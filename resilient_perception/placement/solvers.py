"""Three solvers of the placement problem behind one interface, all scored by ``evaluate_plan``.

* ``cpsat``: exact. The problem as a 0-1 integer program (below) solved by OR-Tools CP-SAT;
  returns the proven optimum, or the best plan with CP-SAT's bound and the gap when the
  time limit stops it.
* ``heuristic``: the paper's Section IV-C: the same program with every 0-1 variable relaxed
  to [0, 1] (its "one device per block" no longer binds: a unit may be split over devices),
  solved as a linear program (HiGHS), then rounded by the paper's Algorithm 1: per request,
  the drop set with the largest relaxed weight; per unit in network order, among the
  devices the relaxation used the one with the highest data rate from the device holding
  the activation (staying on it is best), ties - the first unit, where every device sees
  the same image - to the larger MAC rate; a device without room left for the unit is
  skipped. The LP value is a valid lower bound.
* ``ga``: a genetic algorithm (pymoo), the paper's MATLAB ``ga``: integer genes (per
  request a drop set and a device per unit), uniform crossover, random-reset mutation,
  constraint violations ranked before the objective (feasibility first).

The 0-1 program. Per request r, unit u, device i: ``loc[r,u,i]`` (where the activation
is after unit u: its device, or the previous unit's if u is dropped), ``x[r,u,i]`` (u is
computed on i; equal to ``loc`` for units that cannot be dropped), ``s[r,k]`` (request r
uses drop set k; one per request, only measured sets, so accuracy is a table look-up), and
the link product ``z[r,u,i,k] = loc[r,u,i] * loc[r,u+1,k]`` linearised as a transportation
problem (rows of z sum to ``loc[r,u]``, columns to ``loc[r,u+1]``), which is exact for 0-1
values. A dropped unit sits where its input is (``sum_i z[r,u-1,i,i] >= dropped``), so a
hop out of it is the paper's skip-connection transfer. ``y[i,u]`` marks the weights of u
stored on i (memory). Costs are per unit of objective; CP-SAT needs integers, so the
objective is multiplied by a power of ten and rounded: large enough that the smallest term
keeps :data:`OBJECTIVE_RESOLUTION` integer steps (the alpha = 0 tie-break terms are ~1e-10),
at most :data:`MAX_OBJECTIVE_SCALE`; each term is off by at most 0.5 / scale, see
:func:`cpsat_tolerance`, and the energy rows are in microjoules with
coefficients rounded up and budgets down, so CP-SAT never accepts a plan that
``evaluate_plan`` rejects. Memory (bytes) and computation (MACs) rows are exact integers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .problem import CONSTRAINTS, DROPPED, Plan, Problem, evaluate_batch, evaluate_plan

__all__ = [
    "SOLVERS",
    "SolveResult",
    "binding_constraints",
    "cpsat_tolerance",
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
"""CP-SAT uses its full linear relaxation up to this many variables (about 25 devices)."""

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


def _build(problem: Problem, enforce: Iterable[str] = RESOURCE_FAMILIES) -> _Model | None:
    """The 0-1 program; ``None`` if the accuracy threshold leaves no drop set at all."""
    enforce = set(enforce)
    net, fleet = problem.network, problem.fleet
    n, n_units, n_req = fleet.n_devices, net.n_units, problem.n_requests
    options = net.drop_options(problem.accuracy_threshold if "accuracy" in enforce else None)
    if not options:
        return None
    alpha, beta = problem.weights
    per_second = alpha / (n_req * problem.reference_latency_s)
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
        loss = np.array([net.clean_accuracy - net.accuracy(opt) for opt in options])
        p.add_cost(s[r], beta / n_req * loss)
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


def _decode(model: _Model, values: np.ndarray) -> Plan:
    """The plan of 0-1 variable values (x rounded: computed where x = 1, else dropped)."""
    x = values[model.x] > 0.5  # (R, U, N)
    return Plan(np.where(x.any(axis=2), x.argmax(axis=2), DROPPED))


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


def _objective_scale(program: _Program) -> float:
    smallest = min((abs(c) for c in program.cost.values() if c != 0.0), default=1.0)
    return float(min(10.0 ** math.ceil(math.log10(OBJECTIVE_RESOLUTION / smallest)),
                     MAX_OBJECTIVE_SCALE))


def cpsat_tolerance(problem: Problem) -> float:
    """How far CP-SAT's plan may be above the true optimum from rounding the objective.

    Each request's objective has at most 2U + 1 non-zero terms (U computed units, U - 1
    links, the image link, one drop set); each is rounded by at most 0.5 / scale, so the
    plan CP-SAT proves optimal is within twice that sum of the true optimum.
    """
    model = _build(problem)
    scale = _objective_scale(model.program) if model is not None else MAX_OBJECTIVE_SCALE
    return problem.n_requests * (2 * problem.network.n_units + 1) / scale


def _cpsat(model: _Model, time_limit: float, workers: int, seed: int, with_objective: bool,
           hint: np.ndarray | None = None, work_limit: float | None = None):
    from ortools.sat.python import cp_model

    program = model.program
    cp = cp_model.CpModel()
    var = [cp.new_bool_var(f"v{j}") for j in range(program.n_vars)]
    for ids, coefs, lo, hi, family in program.rows:
        if family == "energy":  # microjoules, rounded so that CP-SAT is never optimistic
            coefs = np.ceil(coefs * MICROJOULES)
            hi = np.floor(hi * MICROJOULES)
        if not np.allclose(coefs, np.round(coefs)):
            raise AssertionError(f"non-integer coefficients in a {family} row")
        expr = cp_model.LinearExpr.weighted_sum([var[j] for j in ids],
                                                np.round(coefs).astype(np.int64).tolist())
        if lo == hi:
            cp.add(expr == int(lo))
        else:
            if np.isfinite(lo):
                cp.add(expr >= int(np.ceil(lo)))
            if np.isfinite(hi):
                cp.add(expr <= int(np.floor(hi)))
    scale = _objective_scale(program)
    if with_objective:
        items = [(var[j], round(c * scale)) for j, c in program.cost.items()]
        cp.minimize(cp_model.LinearExpr.weighted_sum([v for v, _ in items],
                                                     [c for _, c in items]))
    if hint is not None:
        for v, value in zip(var, hint, strict=True):
            cp.add_hint(v, bool(value))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = max(float(time_limit), 0.01)
    if work_limit is not None:
        solver.parameters.max_deterministic_time = float(work_limit)
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    # By default CP-SAT installs its own SIGINT handler for the solve and leaves SIGINT's
    # default action behind: a ROS node (rclpy installs a handler) then dies of SIGINT
    # instead of shutting down. Without it, Ctrl-C is seen when the solve returns, within
    # its time limit.
    solver.parameters.catch_sigint_signal = False
    # The full linear relaxation inside the search gives much better bounds on this problem
    # (10 devices, 3 requests: proven optimal in 5 s instead of a 2% gap after 20 s), but
    # on large models (50 devices: 130k variables) it costs the whole time limit before a
    # first solution.
    solver.parameters.linearization_level = 2 if program.n_vars <= FULL_LP_MAX_VARS else 1
    status = solver.solve(cp)
    values = None
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        values = np.array(solver.boolean_values(var), dtype=float)
    name = {cp_model.OPTIMAL: "optimal", cp_model.FEASIBLE: "feasible",
            cp_model.INFEASIBLE: "infeasible"}.get(status, "unknown")
    bound = solver.best_objective_bound / scale if with_objective else float("nan")
    return name, values, bound


def solve_cpsat(problem: Problem, time_limit: float = 10.0, workers: int = 1,
                seed: int = 0, warm_start: bool = True,
                work_limit: float | None = None) -> SolveResult:
    """Solve exactly with CP-SAT (``workers`` search threads).

    ``time_limit`` is wall-clock seconds; ``work_limit`` optionally also stops the search
    after that much CP-SAT *deterministic* time (about a second of one core each, but the
    same on a loaded machine: with one worker, results are reproducible).

    With ``warm_start`` the better of the relaxation + Algorithm 1 plan (its linear program
    gets at most half the time limit) and Algorithm 1 without the relaxation is CP-SAT's
    first hint, so the result is never worse than the heuristic's.
    """
    started = time.monotonic()
    model = _build(problem)
    if model is None:
        return _result("cpsat", problem, None, "infeasible", float("nan"), started)
    hint, start, lp_bound = None, None, float("nan")
    if warm_start:
        # Algorithm 1 guided by the relaxation, and unguided (every device a candidate: a
        # plain greedy, milliseconds, for when the linear program is slow); the better one.
        _, guided, lp_bound = _heuristic(problem, model, time_limit / 2)
        greedy = _algorithm1(problem, model, np.zeros(model.program.n_vars))
        starts = [p for p in (guided, greedy) if p is not None]
        scores = [evaluate_plan(problem, p) for p in starts]
        feasible = [(e.objective, i) for i, e in enumerate(scores) if e.feasible]
        if feasible:
            start = starts[min(feasible)[1]]
            hint = _encode(problem, model, start)
    if hint is None:
        # No warm start: look for any feasible plan first (without the objective CP-SAT
        # finds one, or proves there is none, much sooner) and optimise from it.
        budget = time_limit - (time.monotonic() - started)
        status, values, _ = _cpsat(model, budget, workers, seed, with_objective=False,
                                   work_limit=work_limit)
        if status == "infeasible":
            return _result("cpsat", problem, None, "infeasible", float("nan"), started)
        if values is not None:
            start, hint = _decode(model, values), values
    budget = time_limit - (time.monotonic() - started)
    status, values, bound = _cpsat(model, budget, workers, seed, with_objective=True, hint=hint,
                                   work_limit=work_limit)
    plan = None if values is None else _decode(model, values)
    if plan is None and start is not None and status == "unknown":
        # The time limit ran out before a better solution: the starting plan stands.
        plan, status = start, "feasible"
    # Both are lower bounds: CP-SAT's (of the rounded objective, so up to the tolerance
    # below the true one) and the relaxation's.
    bound = float(np.nanmax([bound - cpsat_tolerance(problem), lp_bound]))
    if status == "infeasible":
        bound = float("nan")
    return _result("cpsat", problem, plan, status, bound, started)


def binding_constraints(problem: Problem, time_limit: float = 10.0) -> tuple[str, ...]:
    """Which constraint families make an instance infeasible (empty if it is feasible).

    The families whose removal alone makes it feasible; if no single one does, those that
    are infeasible on their own; else all of them together.
    """

    def feasible(enforce: Iterable[str]) -> bool:
        model = _build(problem, enforce)
        if model is None:
            return False
        status, _, _ = _cpsat(model, time_limit, 1, 0, with_objective=False)
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


def _relaxation(model: _Model, time_limit: float) -> tuple[str, np.ndarray | None, float]:
    """Solve the LP relaxation with HiGHS: (status, variable values, optimal value)."""
    # Imported here, as ortools and pymoo are by their solvers: scipy takes a while to
    # import, and `plan --help` or a CP-SAT plan does not need it.
    import scipy.sparse
    from scipy.optimize import linprog

    program = model.program
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
        return "infeasible", None, float("nan")
    if res.status != 0:
        return "unknown", None, float("nan")
    return "optimal", res.x, float(res.fun) * scale


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


def _algorithm1(problem: Problem, model: _Model, values: np.ndarray) -> Plan | None:
    """Round the relaxation to one device per computed unit (the paper's Algorithm 1)."""
    net, rates = problem.network, problem.rates_bps
    mps = problem.fleet.macs_per_second
    room = _Room(problem)
    x = values[model.x]  # (R, U, N)
    weight = values[model.s]  # (R, K)
    devices = np.full((problem.n_requests, net.n_units), DROPPED)
    for r in range(problem.n_requests):
        loss = [net.clean_accuracy - net.accuracy(o) for o in model.options]
        for k in sorted(range(len(model.options)), key=lambda k: (-weight[r, k], loss[k])):
            trial = room.copy()
            placed = _place_request(problem, trial, x[r], model.options[k], r, rates, mps)
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
    status, values, bound = _relaxation(model, time_limit)
    if values is None:
        return status, None, float("nan")
    plan = _algorithm1(problem, model, values)
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
    """Solve with the named solver (one of :data:`SOLVERS`)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    return SOLVERS[solver](problem, time_limit=time_limit, **options)
