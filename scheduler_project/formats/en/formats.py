"""One date-time format throughout the admin and pages: 2026-12-07 09:00:00 UTC (seconds and zone).

Django's en locale shows "Dec. 7, 2026, 9 a.m.": no seconds, no zone, and a slot at 09:00:30 looks
like one at 09:00. Only the display formats change; input formats stay Django's defaults.
"""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
