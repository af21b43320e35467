{
    "name": "Holdfast inbox",
    "summary": "Exactly-once delivery of shop-floor transactions from Holdfast's hub",
    "version": "17.0.1.0.0",
    "category": "Manufacturing",
    "license": "LGPL-3",
    "author": "Holdfast",
    "depends": ["base"],
    "data": [
        "security/holdfast_inbox_security.xml",
        "security/ir.model.access.csv",
    ],
    "installable": True,
    "application": False,
}
