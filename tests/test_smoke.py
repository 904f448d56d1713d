"""The factories build objects the services accept."""


def test_trigger_factory__creates_periodic_task(trigger):
    """A trigger built by the factory has its PeriodicTask."""
    assert trigger.periodic_task is not None
    assert trigger.periodic_task.name == f"trigger:{trigger.pk}"
