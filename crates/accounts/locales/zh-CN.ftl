# 简体中文。键和占位符必须与 en.ftl 一致（由 src/i18n.rs 中的测试检查）。

## 时长

hours-one = { $hours } 小时
hours-other = { $hours } 小时

## 邮箱地址验证

email-verify-subject = 请验证您的 { $site } 邮箱地址
email-verify-body =
    您好：

    为完成 { $site } 账户的设置，请打开以下链接验证您的邮箱地址：

    { $link }

    该链接在 { $expiry }内有效。如果您没有注册过 { $site }，请忽略此邮件。

    —— { $site } 团队

## 重置密码

email-reset-subject = 重置您的 { $site } 密码
email-reset-body =
    您好：

    我们收到了重置您 { $site } 账户密码的请求。请打开以下链接设置新密码：

    { $link }

    该链接在 { $expiry }内有效。

    如果这不是您本人发起的请求，请忽略此邮件，您的密码不会被更改。

    —— { $site } 团队

## 密码已更改通知

email-password-changed-subject = 您的 { $site } 密码已更改
email-password-changed-body =
    您好：

    您的 { $site } 账户密码刚刚被更改。

    如果是您本人进行的更改，则无需任何操作。

    如果不是，可能有他人能够访问您的账户：请立即重置密码，并联系 { $site } 管理员。

    —— { $site } 团队

## 新设备登录

email-new-sign-in-subject = 您的 { $site } 账户在新设备上登录
email-new-sign-in-body =
    您好：

    您的 { $site } 账户刚刚在一台新设备上登录：

    设备：{ $device }
    IP 地址：{ $ip }
    时间：{ $time }

    如果这是您本人的操作，则无需任何处理。如果不是，请立即修改密码，并检查账户中的活动会话和 API 密钥。

    —— { $site } 团队

## 测试邮件

email-test-subject = { $site }：测试邮件
email-test-body =
    这是一封来自 { $site } 的测试邮件。

    如果您能看到这封邮件，说明 SMTP 设置正确，{ $site } 可以正常发送邮件。
