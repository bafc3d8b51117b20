"""The traffic dashboard: a page and a read-only JSON API over an app's store.

::

    from flask_traffic.dashboard import Dashboard

    dashboard = Dashboard()
    dashboard.init_app(app, authorize=lambda: current_user.is_admin)
"""

from __future__ import annotations

from .extension import Dashboard

__all__ = ["Dashboard"]
