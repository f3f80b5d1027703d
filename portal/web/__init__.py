"""What both Flask apps share: request class, headers, guard, errors, i18n."""
