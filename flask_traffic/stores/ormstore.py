"""SQLORMStore and SQLORMModelMixin: traffic in the table of a declarative model."""

from __future__ import annotations

import importlib.util
import logging
import os
import typing as t
from datetime import timedelta

from .._optional import require
from ..policy import LogPolicy
from ..rollups import RollupRetention
from ._sqlbase import SQLTableStore

if t.TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy import Engine, Table
    from sqlalchemy.orm import Session, scoped_session

    from ._sqltable import TableIO

# The mixin is made of SQLAlchemy column definitions, so it exists only with
# SQLAlchemy installed; this module imports without it, so that
# SQLORMStore() can say what to install. Both names are public in
# flask_traffic.stores.sqlschema, and here too: migrations written by
# earlier versions name flask_traffic.stores.ormstore.UTCDateTime.
if importlib.util.find_spec("sqlalchemy") is not None:
    from .sqlschema import SQLORMModelMixin, UTCDateTime

__all__ = ["SQLORMModelMixin", "SQLORMStore", "UTCDateTime"]

logger = logging.getLogger("flask_traffic")


class SQLORMStore(SQLTableStore):
    """Writes records into the table of a declarative model of yours.

    ::

        class Traffic(db.Model, SQLORMModelMixin):
            pass

        traffic.init_app(app, stores=SQLORMStore(Traffic))

    The store writes from its worker thread through a connection of its own
    on the model's engine, one multi-row insert per batch in one
    transaction. It never touches your session: nothing you added to
    ``db.session`` is flushed or committed by it.

    The engine is found in ``init_app``: with Flask-SQLAlchemy, the
    extension's engine for the model's bind key (call ``db.init_app(app)``
    first); otherwise the bind of ``db_session``. The store does not create
    the table: create it as you create your other tables
    (``db.create_all()``, or a migration). Until it exists, writes fail and
    are retried.

    :param model: a mapped declarative model class with the columns of
        :class:`SQLORMModelMixin`.
    :param db_session: a SQLAlchemy ``Session`` (or ``scoped_session``)
        whose bind is the model's database; only its bind is used. Needed
        without Flask-SQLAlchemy.
    :param log_policy: which fields and requests to keep.
    :param sync: write in the request thread; ``None`` follows ``TRAFFIC_SYNC``.
    :param name: how ``flask traffic`` commands and log messages name the
        store; the class name by default.
    :param max_age: a :class:`~datetime.timedelta`: rows older than this are
        deleted by the worker, in batches, at most once every
        ``TRAFFIC_RETENTION_INTERVAL`` seconds.
    :param max_records: keep only the newest this many rows (by
        ``traffic_id``); older ones are deleted the same way.
    :param spool: where records wait on disk while the database is down:
        ``None`` for the app's ``TRAFFIC_SPOOL_DIR``, a folder, or ``False``.
    :param rollups: keep rollups in tables beside the model's, as
        :class:`~flask_traffic.stores.SQLStore` does (made at the first
        fold); on by default, ``False`` turns them off. A policy that leaves
        out a field they count keeps none, without a word, as does a table
        without a column they count.
    :param rollup_retention: how long each bucket size is kept
        (:class:`~flask_traffic.rollups.RollupRetention`).

    :meth:`read`, :meth:`summary` and retention run in the database, as
    :class:`~flask_traffic.stores.SQLStore`'s do.
    """

    model: type[t.Any]
    db_session: Session | scoped_session[t.Any] | None

    def __init__(
        self,
        model: type[t.Any] | None = None,
        db_session: Session | scoped_session[t.Any] | None = None,
        log_policy: LogPolicy | None = None,
        *,
        sync: bool | None = None,
        name: str | None = None,
        max_age: timedelta | None = None,
        max_records: int | None = None,
        spool: str | os.PathLike[str] | bool | None = None,
        rollups: bool = True,
        rollup_retention: RollupRetention | None = None,
    ) -> None:
        require("sqlalchemy", extra="sqlalchemy", needed_by="SQLORMStore")
        import sqlalchemy as sa
        from sqlalchemy.orm import Mapper, Session, scoped_session

        from .sqlschema import ID_COLUMN

        super().__init__(
            log_policy,
            sync=sync,
            name=name,
            max_age=max_age,
            max_records=max_records,
            spool=spool,
            rollups=rollups,
            rollup_retention=rollup_retention,
        )
        if model is None:
            raise TypeError(
                "SQLORMStore needs a model: pass a declarative model class that uses "
                "SQLORMModelMixin, e.g. SQLORMStore(Traffic)."
            )
        mapper = sa.inspect(model, raiseerr=False) if isinstance(model, type) else None
        if not isinstance(mapper, Mapper) or not isinstance(mapper.local_table, sa.Table):
            raise TypeError(
                f"model must be a mapped declarative model class that uses SQLORMModelMixin, "
                f"e.g. class Traffic(db.Model, SQLORMModelMixin), got {model!r}."
            )
        table = mapper.local_table
        missing = [name for name in (ID_COLUMN, *self.fields) if name not in table.c]
        if missing:
            raise TypeError(
                f"model {model.__name__} has no column {', '.join(missing)}: add "
                f"SQLORMModelMixin to its bases, e.g. "
                f"class {model.__name__}(db.Model, SQLORMModelMixin)."
            )
        if db_session is not None and not isinstance(db_session, (Session, scoped_session)):
            raise TypeError(
                f"db_session must be a sqlalchemy.orm.Session or scoped_session, "
                f"got {type(db_session).__name__}."
            )
        self.model = model
        self.db_session = db_session
        self._table: Table = table

    def __repr__(self) -> str:
        return f"<SQLORMStore model={self.model.__name__} table={self._table.name!r}>"

    def open_table(self, app: Flask) -> tuple[Engine, TableIO]:
        from ._sqltable import TableIO

        engine = self._find_engine(app)
        if type(engine.pool).__name__ in ("StaticPool", "SingletonThreadPool"):
            logger.warning(
                "%s: the engine of %s keeps one connection (an in-memory SQLite "
                "database?), which the store's writes would share with your session; "
                "use a database file.",
                self.name,
                self.model.__name__,
            )
        return engine, TableIO(self._table, self.fields)

    def _find_engine(self, app: Flask) -> Engine:
        import sqlalchemy as sa

        name = self.model.__name__
        with app.app_context():
            if self.db_session is not None:
                try:
                    bind = self.db_session.get_bind(mapper=sa.inspect(self.model))
                except sa.exc.UnboundExecutionError:
                    raise RuntimeError(
                        f"SQLORMStore: the db_session given has no engine for {name}; "
                        f"pass a Session made with bind=engine (or sessionmaker(bind=engine))."
                    ) from None
                return bind.engine if isinstance(bind, sa.Connection) else bind
            db: t.Any = getattr(self.model, "__fsa__", None) or app.extensions.get("sqlalchemy")
            if db is not None and app.extensions.get("sqlalchemy") is not db:
                raise RuntimeError(
                    f"SQLORMStore({name}): Flask-SQLAlchemy is not set up on this app yet; "
                    f"call db.init_app(app) before traffic.init_app(app)."
                )
            if db is None:
                raise RuntimeError(
                    f"SQLORMStore cannot tell which database {name}'s table is in: "
                    f"pass db_session= (a Session bound to its engine)."
                )
            bind_key = self._table.metadata.info.get("bind_key")
            engine: Engine | None = db.engines.get(bind_key)
            if engine is None:
                raise RuntimeError(
                    f"SQLORMStore({name}): Flask-SQLAlchemy has no engine for the bind key "
                    f"{bind_key!r}; add it to SQLALCHEMY_BINDS."
                )
            return engine
