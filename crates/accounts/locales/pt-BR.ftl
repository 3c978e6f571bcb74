# Português do Brasil. As chaves e os marcadores devem ser os mesmos de en.ftl
# (verificado pelos testes em src/i18n.rs).

## Durações

hours-one = { $hours } hora
hours-other = { $hours } horas

## Confirmação do endereço de e-mail

email-verify-subject = { $site }: confirme seu endereço de e-mail
email-verify-body =
    Olá,

    Para concluir a configuração da sua conta { $site }, confirme seu endereço de e-mail abrindo este link:

    { $link }

    O link é válido por { $expiry }. Se você não criou uma conta { $site }, pode ignorar este e-mail com segurança.

    Equipe { $site }

## Redefinição de senha

email-reset-subject = { $site }: redefinição de senha
email-reset-body =
    Olá,

    Recebemos uma solicitação para redefinir a senha da sua conta { $site }. Para escolher uma nova senha, abra este link:

    { $link }

    O link é válido por { $expiry }.

    Se não foi você quem fez essa solicitação, ignore este e-mail: sua senha continuará a mesma.

    Equipe { $site }

## Aviso de senha alterada

email-password-changed-subject = { $site }: sua senha foi alterada
email-password-changed-body =
    Olá,

    A senha da sua conta { $site } acabou de ser alterada.

    Se foi você, não é preciso fazer mais nada.

    Se não foi você, outra pessoa pode ter acesso à sua conta: redefina sua senha imediatamente e entre em contato com o administrador de { $site }.

    Equipe { $site }

## Acesso a partir de um novo dispositivo

email-new-sign-in-subject = { $site }: novo acesso à sua conta
email-new-sign-in-body =
    Olá,

    Sua conta { $site } acabou de ser acessada a partir de um novo dispositivo:

    Dispositivo: { $device }
    Endereço IP: { $ip }
    Data e hora: { $time }

    Se foi você, não é preciso fazer mais nada. Caso contrário, altere sua senha imediatamente e revise as sessões ativas e as chaves de API da sua conta.

    Equipe { $site }

## E-mail de teste

email-test-subject = { $site }: e-mail de teste
email-test-body =
    Este é um e-mail de teste enviado por { $site }.

    Se você está lendo esta mensagem, as configurações de SMTP estão funcionando e { $site } já pode enviar e-mails.
