"""``smppd contacts``: read and clean the phone numbers of a portal's CRM before a campaign.

Why in the daemon and not in the CLI: the daemon owns each portal's tokens (a refresh rotates
them, one owner only) and its REST budget (~2 requests a second shared with the status
pusher). A job here uses the same `RestClient` at ``PRIORITY_BULK``, so it only takes what
the pusher leaves (rest/budget.py), and a 429/503 slows it down instead of failing it.

How a base of tens of thousands is read within that budget (b24-rest-docs):
* ``crm.<entity>.list`` with ``start=-1``, ``order[ID]=ASC`` and an ``ID`` filter skips the
  count a normal page pays for (api-reference/performance/huge-data.md); a page is 50 rows.
* ``batch`` runs 50 commands as one request (bitrix24.md §9), so each request reads 50
  *windows of ids* at once (``>ID`` lo, ``<=ID`` hi); a window that comes back full (50 rows)
  goes round again from its last id. One counted call per entity (``start=0``: ``total``) and
  one ``order[ID]=DESC`` call (highest id) size the windows and the progress bar.
* ``PHONE`` is a multiple field: only read when named in ``select`` and written back by its
  value ``ID`` with ``VALUE`` and ``VALUE_TYPE`` (api-reference/crm/contacts/crm-contact-update.md,
  "Working with Multiple Fields"), so other numbers of the entity are left alone.
* ``UF_CRM_SMS_INVALID`` is created with ``crm.<entity>.userfield.add`` (``FIELD_NAME`` without
  the ``UF_CRM_`` prefix, which the core adds; crm-contact-userfield-add.md) when
  ``crm.<entity>.userfield.list`` does not have it.

The job logic is plain code over three small pieces: `classify` (phone.py's verdict on a
stored value), `ScanReport` (what a scan found) and `plan_update` (what normalize writes for
one row). Nothing here logs a phone number.
"""

from .channel import PreferredChannel
from .hlr import SmscHlr
from .jobs import ContactsJobs, RpcRefused
from .scan import BY_CODES, ENTITIES, INVALID_FIELD, ContactsJob, Progress, ScanReport, Verdict, classify, plan_update

__all__ = ["BY_CODES", "ENTITIES", "INVALID_FIELD", "ContactsJob", "ContactsJobs", "PreferredChannel", "Progress",
           "RpcRefused", "ScanReport", "SmscHlr", "Verdict", "classify", "plan_update"]
