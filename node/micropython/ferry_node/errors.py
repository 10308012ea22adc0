# Reason codes (docs/protocol.md section 7) and the error that carries one.
NONE = 0
MALFORMED = 1
UNKNOWN_TYPE = 2
OVERSIZE = 3
BAD_SIGNATURE = 4
DIGEST_MISMATCH = 5
WRONG_HARDWARE = 6
DOWNGRADE = 7
SECURITY_DOWNGRADE = 8
UNKNOWN_KEY = 9
SELF_TEST_FAILED = 10
BOOT_FAILED = 11
WATCHDOG = 12
NO_SPACE = 14
CANCELLED = 16
UNKNOWN_SESSION = 17
FLASH_ERROR = 18
BAD_FIELD = 20
DELTA_BASE_MISMATCH = 21
DELTA_FAILED = 22
NO_ROLLBACK_SUPPORT = 23
UNSUPPORTED_VERSION = 24


class Refused(Exception):
    # A message or release the node will not take: reason code plus a human detail (<= 128 bytes).
    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
