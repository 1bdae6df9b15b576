"""metrics on one scale (val_rmse, val_log_loss, ...), trial.best_epoch and trial.stopped_epoch

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Spelled out, not imported: a migration stays as it was written.
EPOCH_COLUMNS = ('val_log_loss', 'val_rmse', 'val_mae', 'val_r2')
TEST_COLUMNS = ('test_log_loss', 'test_rmse', 'test_mae', 'test_r2')


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('trial', schema=None) as batch_op:
        for name in (*EPOCH_COLUMNS, *TEST_COLUMNS):
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('best_epoch', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('stopped_epoch', sa.Integer(), nullable=True))
    with op.batch_alter_table('trial_epoch', schema=None) as batch_op:
        for name in EPOCH_COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('trial_epoch', schema=None) as batch_op:
        for name in reversed(EPOCH_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table('trial', schema=None) as batch_op:
        batch_op.drop_column('stopped_epoch')
        batch_op.drop_column('best_epoch')
        for name in reversed((*EPOCH_COLUMNS, *TEST_COLUMNS)):
            batch_op.drop_column(name)
