// Package archtest holds no code: its test checks that project packages
// import each other only in the direction DESIGN.md allows.
package archtest
