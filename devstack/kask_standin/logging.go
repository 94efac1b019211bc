package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Level is the severity of a log line.
type Level int

// Levels in increasing severity, with the names the log_level setting accepts.
const (
	LevelDebug Level = iota
	LevelInfo
	LevelWarning
	LevelError
	LevelFatal
)

var levelNames = map[Level]string{
	LevelDebug:   "DEBUG",
	LevelInfo:    "INFO",
	LevelWarning: "WARNING",
	LevelError:   "ERROR",
	LevelFatal:   "FATAL",
}

func parseLevel(name string) (Level, bool) {
	for level, levelName := range levelNames {
		if strings.EqualFold(name, levelName) {
			return level, true
		}
	}
	return LevelInfo, false
}

// Logger writes one JSON object per line and drops lines below its minimum level.
type Logger struct {
	mu      sync.Mutex
	out     io.Writer
	service string
	minimum Level
}

// NewLogger returns a Logger for the named service; an unknown level name means INFO.
func NewLogger(out io.Writer, service string, levelName string) *Logger {
	minimum, _ := parseLevel(levelName)
	return &Logger{out: out, service: service, minimum: minimum}
}

type logLine struct {
	Timestamp      string `json:"@timestamp"`
	Level          string `json:"level"`
	Service        string `json:"service"`
	Implementation string `json:"implementation"`
	Message        string `json:"message"`
	RequestID      string `json:"request_id,omitempty"`
}

// Log writes a message at the given level; requestID may be empty.
func (l *Logger) Log(level Level, requestID string, format string, args ...any) {
	if level < l.minimum {
		return
	}
	line := logLine{
		Timestamp:      time.Now().UTC().Format(time.RFC3339Nano),
		Level:          levelNames[level],
		Service:        l.service,
		Implementation: implementation,
		Message:        fmt.Sprintf(format, args...),
		RequestID:      requestID,
	}
	encoded, err := json.Marshal(line)
	if err != nil {
		encoded = []byte(fmt.Sprintf(`{"level":"ERROR","message":%q}`, "log line not encodable: "+err.Error()))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.out.Write(append(encoded, '\n'))
}

// Debug logs at DEBUG level.
func (l *Logger) Debug(format string, args ...any) { l.Log(LevelDebug, "", format, args...) }

// Info logs at INFO level.
func (l *Logger) Info(format string, args ...any) { l.Log(LevelInfo, "", format, args...) }

// Warning logs at WARNING level.
func (l *Logger) Warning(format string, args ...any) { l.Log(LevelWarning, "", format, args...) }

// Error logs at ERROR level.
func (l *Logger) Error(format string, args ...any) { l.Log(LevelError, "", format, args...) }

// Fatal logs at FATAL level; the caller decides how to exit.
func (l *Logger) Fatal(format string, args ...any) { l.Log(LevelFatal, "", format, args...) }
