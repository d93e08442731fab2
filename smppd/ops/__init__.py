"""Operations: metrics, logs, the status journal, the admin methods, systemd's protocols, reload."""
