"""search methods and pruning: sweep.method, trial_rung

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('sweep', schema=None) as batch_op:
        batch_op.add_column(sa.Column('method', sa.String(length=8), server_default='grid', nullable=False))
    op.create_table('trial_rung',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('threshold', sa.Float(), nullable=True),
    sa.Column('n_compared', sa.Integer(), nullable=False),
    sa.Column('decision', sa.String(length=8), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweep.id'], name=op.f('fk_trial_rung_sweep_id_sweep'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trial_id'], ['trial.id'], name=op.f('fk_trial_rung_trial_id_trial'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trial_rung')),
    sa.UniqueConstraint('trial_id', 'attempt', 'epoch', name=op.f('uq_trial_rung_trial_id_attempt_epoch'))
    )
    with op.batch_alter_table('trial_rung', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trial_rung_sweep_id'), ['sweep_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('trial_rung', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trial_rung_sweep_id'))
    op.drop_table('trial_rung')
    with op.batch_alter_table('sweep', schema=None) as batch_op:
        batch_op.drop_column('method')
