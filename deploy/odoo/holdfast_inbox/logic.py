"""The decision logic of ``holdfast.inbox.apply_batch``, free of Odoo so it can be tested alone.

The contract (Holdfast's DESIGN.md, "Odoo"): for each transaction of a batch, in order,

* one whose id is already recorded is skipped and answered ``duplicate`` with the recorded result;
* after a failure in an ordering key, the rest of that key in the batch is ``not_executed``;
* private methods (a leading ``_``) are refused, as Odoo's own RPC dispatcher refuses them;
* references are resolved server-side, in the same database transaction: ``{"$ref": {"model",
  "domain"}}`` must match exactly one record, ``{"$xmlid": "module.name"}`` must exist, and
  ``{"$result": {"id": "<transaction id>"}}`` is the recorded result of an earlier transaction
  (``"path"``, a list of keys and indexes, picks inside it);
* the call runs in a savepoint and the id is recorded only when it succeeded, so a retry after
  an operator's fix runs it again;
* a result that is not a success fails the transaction and rolls it back (``check_result``):
  a wizard of ``WIZARD_MODELS`` (``holdfast.Wizard``, naming it), any other action than closing
  the window or a notification (``holdfast.UnknownAction``, the action verbatim), a ``load``
  that answered errors (``holdfast.LoadRefused``);
* the batch stops starting new transactions once its time budget (a share of Odoo's
  ``limit_time_real``) is spent: the rest are ``not_executed`` and the hub sends them again;
* a batch sent under a hub leader's lease ``epoch`` older than the newest epoch the inbox has
  seen (a deposed leader of replicated hubs) runs nothing: every transaction is
  ``not_executed`` with reason ``stale_epoch``; a newer epoch is recorded before anything runs.

The ORM glue (``models/inbox.py``) passes in what touches the database.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional


class Refusal(Exception):
    """A transaction refused before or while running: ``name`` as Odoo would name it."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name
        self.message = message


USER_ERROR = "odoo.exceptions.UserError"
ACCESS_ERROR = "odoo.exceptions.AccessError"
WIZARD = "holdfast.Wizard"
UNKNOWN_ACTION = "holdfast.UnknownAction"
LOAD_REFUSED = "holdfast.LoadRefused"

# Wizards by which Odoo asks a person instead of finishing (a backorder, a count that stock
# moved past, a lot to confirm, ...): the transaction waits in Holdfast's quarantine.
WIZARD_MODELS = frozenset(
    {
        "stock.backorder.confirmation",
        "stock.immediate.transfer",
        "stock.inventory.conflict",
        "stock.track.confirmation",
        "stock.warn.insufficient.qty.scrap",
        "stock.inventory.warning",
        "mrp.production.backorder",
        "mrp.consumption.warning",
        "mrp.immediate.production",
    }
)


@dataclass
class Env:
    """What the logic may ask of the database.

    recorded(txn_id) -> (True, result) when the id is recorded, else (False, None).
    search(model, domain) -> list of ids.
    xmlid(name) -> id or None.
    run(model, method, args, kwargs, txn_id, check) -> result: the call, ``check(result)``
        and the recording of ``txn_id`` with its result, together in one savepoint; raises
        Refusal (or anything else, which ``name_of`` names) when the call or the check fails,
        leaving nothing behind.
    time_left() -> seconds of the batch's budget left.
    name_of(exc) -> the dotted name of an exception, as Odoo reports it in ``data.name``.
    fence(epoch) -> the newest leader epoch seen, after recording ``epoch`` when it is newer;
        held until the batch's transaction ends, so no batch of an older epoch runs after a
        newer one was recorded.
    """

    recorded: Callable[[str], Any]
    search: Callable[[str, list], List[int]]
    xmlid: Callable[[str], Optional[int]]
    run: Callable[[str, str, list, dict, str, Callable[[Any], None]], Any]
    time_left: Callable[[], float]
    name_of: Callable[[BaseException], str]
    fence: Callable[[int], int] = lambda epoch: epoch


def apply_batch(items: List[Dict[str, Any]], env: Env, epoch: Optional[int] = None) -> List[Dict[str, Any]]:
    """Answers one batch, one answer per item, in order."""
    if not isinstance(items, list):
        raise Refusal("odoo.exceptions.ValidationError", "apply_batch() needs a list of transactions")
    if epoch is not None:
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise Refusal("odoo.exceptions.ValidationError", "epoch must be a positive integer")
        newest = env.fence(epoch)
        if epoch < newest:
            reason = "stale_epoch: sent under lease epoch %d; epoch %d leads now" % (epoch, newest)
            return [
                {"id": item.get("id") if isinstance(item, dict) else None, "status": "not_executed", "reason": reason}
                for item in items
            ]
    failed_keys = set()
    answers = []
    for item in items:
        txn_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(txn_id, str) or not txn_id:
            raise Refusal("odoo.exceptions.ValidationError", "each transaction needs an id")
        key = item.get("order_key", "")
        if key in failed_keys:
            answers.append({"id": txn_id, "status": "not_executed"})
            continue
        found, result = env.recorded(txn_id)
        if found:
            answers.append({"id": txn_id, "status": "duplicate", "result": result})
            continue
        if env.time_left() <= 0:
            answers.append({"id": txn_id, "status": "not_executed", "reason": "time budget spent"})
            continue
        try:
            result = run_one(item, env)
        except Exception as exc:  # every failure is answered, none escapes the batch
            failed_keys.add(key)
            name = exc.name if isinstance(exc, Refusal) else env.name_of(exc)
            message = exc.message if isinstance(exc, Refusal) else str(exc)
            answers.append({"id": txn_id, "status": "failed", "error": {"name": name, "message": message}})
            continue
        answers.append({"id": txn_id, "status": "applied", "result": result})
    return answers


def run_one(item: Dict[str, Any], env: Env) -> Any:
    model, method = item.get("model"), item.get("method")
    if not isinstance(model, str) or not model or not isinstance(method, str) or not method:
        raise Refusal("odoo.exceptions.ValidationError", "a transaction needs a model and a method")
    if method.startswith("_"):
        raise Refusal(
            ACCESS_ERROR, "Private methods (such as %s.%s) cannot be called remotely." % (model, method)
        )
    args = resolve(item.get("args", []), env)
    kwargs = resolve(item.get("kwargs", {}), env)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise Refusal("odoo.exceptions.ValidationError", "args must be a list and kwargs an object")
    return env.run(model, method, args, kwargs, item["id"], check_result)


def check_result(result: Any) -> None:
    """Raises Refusal when what a call returned means it did not finish."""
    if not isinstance(result, dict):
        return
    kind = result.get("type")
    if isinstance(kind, str) and kind.startswith("ir.actions."):
        if kind == "ir.actions.act_window_close":
            return
        if kind == "ir.actions.client" and result.get("tag") == "display_notification":
            return
        res_model = result.get("res_model")
        if kind == "ir.actions.act_window" and res_model in WIZARD_MODELS:
            raise Refusal(
                WIZARD, "Odoo asks a person to decide in the %s wizard (%s)" % (res_model, result.get("name") or "")
            )
        raise Refusal(UNKNOWN_ACTION, _json(result))
    messages = result.get("messages")
    if result.get("ids") is False and isinstance(messages, list):
        errors = [m.get("message", "") for m in messages if isinstance(m, dict) and m.get("type") == "error"]
        raise Refusal(LOAD_REFUSED, "; ".join(errors))


def resolve(value: Any, env: Env) -> Any:
    """Replaces every reference in ``value`` by what it names."""
    if isinstance(value, dict) and len(value) == 1:
        ((tag, spec),) = value.items()
        if tag == "$ref":
            return _ref(spec, env)
        if tag == "$xmlid":
            found = env.xmlid(spec) if isinstance(spec, str) else None
            if found is None:
                raise Refusal(USER_ERROR, "reference $xmlid %r does not exist" % (spec,))
            return found
        if tag == "$result":
            return _result(spec, env)
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    return value


def _ref(spec: Any, env: Env) -> int:
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), str):
        raise Refusal(USER_ERROR, "reference %r needs a model" % (spec,))
    model, domain = spec["model"], spec.get("domain", [])
    ids = env.search(model, domain)
    if len(ids) != 1:
        raise Refusal(
            USER_ERROR,
            "reference %s %s matched %d records; exactly one must match" % (model, _domain(domain), len(ids)),
        )
    return ids[0]


def _result(spec: Any, env: Env) -> Any:
    txn_id = spec.get("id") if isinstance(spec, dict) else None
    if not isinstance(txn_id, str):
        raise Refusal(USER_ERROR, "reference $result %r needs the id of an earlier transaction" % (spec,))
    found, result = env.recorded(txn_id)
    if not found:
        raise Refusal(USER_ERROR, "reference $result names transaction %s, which is not applied" % txn_id)
    for step in spec.get("path", []):
        try:
            result = result[step]
        except (KeyError, IndexError, TypeError):
            raise Refusal(USER_ERROR, "reference $result %s has nothing at %r" % (txn_id, step)) from None
    return result


def _domain(domain: Any) -> str:
    return _json(domain)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
