"""The ORM glue of holdfast.inbox: a table of applied transaction ids and the batch method.

Every decision is in ``..logic`` (tested without Odoo); this file only connects it to the
database: the recorded ids, searches and external ids for references, a savepoint per call,
and the time budget taken from ``limit_time_real``.
"""

import json
import time

from odoo import api, fields, models, tools
from odoo.exceptions import AccessError
from odoo.api import call_kw

from .. import logic

# Share of limit_time_real a batch may spend starting transactions: the rest of the limit is
# headroom for the one running when the budget ends and for the commit.
BUDGET_SHARE = 0.5


class HoldfastInboxFence(models.Model):
    """The newest lease epoch of a Holdfast hub leader this database has seen (one row)."""

    _name = "holdfast.inbox.fence"
    _description = "Holdfast: newest hub leader epoch seen"
    _log_access = False

    epoch = fields.Integer(required=True, default=0, readonly=True)


class HoldfastInbox(models.Model):
    _name = "holdfast.inbox"
    _description = "Holdfast: transactions applied exactly once"
    _order = "id"
    _log_access = False

    txn_id = fields.Char(required=True, index=True, readonly=True)
    plant = fields.Char(required=True, index=True, readonly=True)
    order_key = fields.Char(readonly=True)
    model_name = fields.Char(readonly=True)
    method = fields.Char(readonly=True)
    result = fields.Text(readonly=True, help="The call's result, as JSON")
    applied_at = fields.Datetime(required=True, readonly=True, default=fields.Datetime.now)

    _sql_constraints = [
        ("txn_id_unique", "unique(txn_id)", "A Holdfast transaction is recorded once."),
    ]

    @api.model
    def apply_batch(self, transactions, plant=None, epoch=None):
        """Applies a batch from the hub; answers one row per transaction, in order. ``epoch``
        is the sending hub leader's lease epoch (replicated hubs): an older one than the newest
        seen runs nothing."""
        if not self.env.user.has_group("holdfast_inbox.group_integration"):
            raise AccessError("Only members of 'Holdfast integration' may deliver Holdfast transactions.")
        limit = float(tools.config.get("limit_time_real") or 120)
        deadline = time.monotonic() + BUDGET_SHARE * limit
        by_item = {}

        def recorded(txn_id):
            row = self.sudo().search([("txn_id", "=", txn_id)], limit=1)
            return (True, json.loads(row.result or "null")) if row else (False, None)

        def search(model, domain):
            return self.env[model].search(domain).ids

        def xmlid(name):
            record = self.env.ref(name, raise_if_not_found=False)
            return record.id if record else None

        def run(model, method, args, kwargs, txn_id, check):
            item = by_item[txn_id]
            with self.env.cr.savepoint():
                result = call_kw(self.env[model], method, args, kwargs)
                if isinstance(result, models.BaseModel):
                    result = result.ids
                check(result)
                self.sudo().create(
                    {
                        "txn_id": txn_id,
                        "plant": plant or "",
                        "order_key": item.get("order_key", ""),
                        "model_name": model,
                        "method": method,
                        "result": json.dumps(result, default=str),
                    }
                )
            return result

        def name_of(exc):
            return "%s.%s" % (type(exc).__module__, type(exc).__name__)

        def fence(epoch):
            # Read under a share lock held to the end of this transaction: a newer epoch's
            # UPDATE waits for every batch of the older one still running, and no older batch
            # starts after it committed.
            cr = self.env.cr
            cr.execute("INSERT INTO holdfast_inbox_fence (id, epoch) VALUES (1, 0) ON CONFLICT (id) DO NOTHING")
            cr.execute("SELECT epoch FROM holdfast_inbox_fence WHERE id = 1")
            if epoch > cr.fetchone()[0]:
                cr.execute(
                    "UPDATE holdfast_inbox_fence SET epoch = GREATEST(epoch, %s) WHERE id = 1 RETURNING epoch", (epoch,)
                )
                return cr.fetchone()[0]
            cr.execute("SELECT epoch FROM holdfast_inbox_fence WHERE id = 1 FOR SHARE")
            return cr.fetchone()[0]

        for item in transactions if isinstance(transactions, list) else []:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                by_item[item["id"]] = item
        env = logic.Env(
            recorded=recorded,
            search=search,
            xmlid=xmlid,
            run=run,
            time_left=lambda: deadline - time.monotonic(),
            name_of=name_of,
            fence=fence,
        )
        try:
            return logic.apply_batch(transactions, env, epoch)
        except logic.Refusal as refusal:
            raise AccessError(refusal.message) if refusal.name == logic.ACCESS_ERROR else ValueError(refusal.message)
