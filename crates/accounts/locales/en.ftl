# English texts: the reference locale and the fallback for every other one.
#
# Syntax (a subset of Fluent): `key = value`; a value may go on over indented lines
# (blank lines in between are kept); `{ $name }` is a placeholder.
# Every key here must exist in every other locale with the same placeholders
# (checked by the tests in src/i18n.rs).
#
# Placeholders used throughout: { $site } is the product name as the operator configured it.

## Durations. The caller picks `-one` or `-other` by the language's plural rule.

hours-one = { $hours } hour
hours-other = { $hours } hours

## E-mail address verification. { $link } opens the confirmation page; { $expiry } is a
## duration from above ("24 hours").

email-verify-subject = Confirm your e-mail address for { $site }
email-verify-body =
    Hello,

    To finish setting up your { $site } account, please confirm your e-mail address by opening this link:

    { $link }

    The link is valid for { $expiry }. If you did not sign up for { $site }, you can safely ignore this e-mail.

    — The { $site } team

## Password reset.

email-reset-subject = Reset your { $site } password
email-reset-body =
    Hello,

    We received a request to reset the password of your { $site } account. To choose a new password, open this link:

    { $link }

    The link is valid for { $expiry }.

    If you did not ask for this, you can ignore this e-mail: your password stays unchanged.

    — The { $site } team

## Notice after a password change.

email-password-changed-subject = Your { $site } password was changed
email-password-changed-body =
    Hello,

    The password of your { $site } account was just changed.

    If you made this change, there is nothing else to do.

    If you did not, someone else may have access to your account: reset your password right away and contact your { $site } administrator.

    — The { $site } team

## Sign-in from a device not seen before. { $device } is e.g. "Firefox on Windows",
## { $time } a date and time with its time zone.

email-new-sign-in-subject = New sign-in to your { $site } account
email-new-sign-in-body =
    Hello,

    Your { $site } account was just signed in to from a new device:

    Device: { $device }
    IP address: { $ip }
    Time: { $time }

    If this was you, there is nothing else to do. If not, change your password right away and review the active sessions and API keys of your account.

    — The { $site } team

## Test message sent from the SMTP settings page.

email-test-subject = { $site }: test e-mail
email-test-body =
    This is a test e-mail from { $site }.

    If you can read it, the SMTP settings work and { $site } can send e-mail.
