DROP TABLE apple_pace;
